"""``rnnfast.save`` / ``rnnfast.load``: a model (constructor arguments and weights) in one ``.npz`` file.

``save(module, path)`` writes an ``.npz`` archive (exactly at ``path``; no suffix is added) holding the
module's ``state_dict()`` arrays under their (dotted) names and one more entry, ``METADATA_KEY``, a JSON
string::

    {"format": "rnnfast", "format_version": 1, "class": "GRU",
     "args": {"input_size": ..., "hidden_size": ..., "num_layers": ..., "bias": ..., "batch_first": ...,
              "dropout": ..., "bidirectional": ..., "dtype": "float32",
              "proj_size": ... (LSTM), "nonlinearity": ... (RNN), "linear_before_reset": ... (GRU)},
     "rnnfast_version": "0.1.0"}

plus ``"inference_weights": "bfloat16"`` when the layer was set to that mode (``set_inference_weights``;
absent for the default "float32", so such files are exactly as before).

An ``RNN``/``LSTM``/``GRU`` is recorded under its short class name as above. Any other ``rnnfast.Module``
(a model of your own, ``rnnfast.nn.Sequential``, a cell, ...) is recorded as ``"class":
"package.module:QualName"`` with ``"args"`` the keyword arguments of its ``get_config()``: by default the
arguments its constructor was called with (``Module`` records them), encoded as JSON, where a dtype
becomes ``{"__dtype__": "float32"}``, a tuple ``{"__tuple__": [...]}``, a dict ``{"__dict__": {...}}``, a
sub-module passed as an argument ``{"__module__": {"class": ..., "args": ...}}`` (recursively), and a
``numpy.random.Generator`` (a ``seed=``) ``None`` (the loaded weights replace the initial ones anyway). A
class whose constructor takes anything else overrides ``get_config()`` to return plain values. The class
must be importable by that name where the file is loaded (so not one defined in an interactive session).

The file is written atomically: into a temporary file ``.<name>.<16 hex digits>.tmp`` in the same
directory, flushed and fsynced, then renamed over ``path``; on any failure the temporary file is removed
and a previous file at ``path`` is left as it was. A save that is killed (``kill -9``, power loss) cannot
remove its temporary file; the next ``save`` to the same ``path`` removes such leftovers. Each writer holds
an exclusive ``flock`` on its temporary file, so a leftover is recognised by its lock being free and a
concurrent save's file is never touched (where ``fcntl`` is missing, e.g. Windows, leftovers older than an
hour are removed).

``load(path)`` rebuilds the module with the recorded constructor arguments and loads the arrays (it
returns the module in training mode, like a new one). Nothing in the file is ever unpickled, and a class
that is not an ``rnnfast.Module`` subclass is refused; finding the class imports the module the file names
(as unpickling would), so load files from sources you trust with the code on your path. Before anything is built or read into memory, the
arrays' declared shapes and dtypes (from the ``.npy`` headers) are checked: each must fit in the file (a
small file declaring a huge member is refused), an ``RNN``/``LSTM``/``GRU``'s arguments must not imply
far more parameter values than the file holds (twice as many plus 65536), and an integer argument of any
other class (seeds aside) may not exceed the number of values the file holds plus 1024. So a crafted few-KB file fails fast with
ValueError instead of allocating gigabytes. A file that is not such an archive (truncated, another format,
another format version, missing or mis-shaped arrays) raises ValueError saying what is wrong.
"""
from __future__ import annotations

import importlib
import json
import numbers
import os
import re
import secrets
import stat
import time

import numpy as np

from ._core.bf16 import BFLOAT16
from ._core.checks import check_dtype
from ._core.functional import gates
from ._core.version import VERSION
from .layers import GRU, INFERENCE_WEIGHTS, LSTM, RNN
from .module import Module

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["save", "load", "METADATA_KEY", "FORMAT_NAME", "FORMAT_VERSION"]

METADATA_KEY = "__rnnfast_metadata__"
FORMAT_NAME = "rnnfast"
FORMAT_VERSION = 1

_CLASSES = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
_GATES = {"RNN": gates("rnn_tanh"), "LSTM": gates("lstm"), "GRU": gates("gru")}  # from csrc/common/cells.h
# An integer constructor argument may exceed the number of values the file holds by at most this much
# (small counts such as a kernel size or a maximum length need no weights).
_INT_SLACK = 1024
# A layer whose arguments imply more than twice the values the file holds, plus this, is not built.
_BUILD_SLACK = 1 << 16
_MAX_DEPTH = 32  # nesting of sub-module configs


# =========================================================================================== helpers


def _check_path(path, name="path"):
    if isinstance(path, (str, bytes, os.PathLike)):
        p = os.fspath(path)
        p = os.fsdecode(p) if isinstance(p, bytes) else p
        if p:
            return p
        raise ValueError(f"{name} must not be empty")
    raise TypeError(f"{name}: expected a str or os.PathLike file name, got {type(path).__name__}")


def _bad(path, msg):
    return ValueError(f"load: {path!r}: {msg}")


def _layer_args(module):
    """Constructor arguments of an RNN/LSTM/GRU, as the version-1 metadata records them."""
    args = {"input_size": int(module.input_size), "hidden_size": int(module.hidden_size),
            "num_layers": int(module.num_layers), "bias": bool(module.bias), "batch_first": bool(module.batch_first),
            "dropout": float(module.dropout), "bidirectional": bool(module.bidirectional),
            "dtype": np.dtype(module.dtype).name}
    if module.recurrent_dropout:
        args["recurrent_dropout"] = float(module.recurrent_dropout)
    if isinstance(module, LSTM):
        args["proj_size"] = int(module.proj_size)
    elif isinstance(module, RNN):
        args["nonlinearity"] = str(module.nonlinearity)
    else:
        args["linear_before_reset"] = bool(module.linear_before_reset)
    return args


def _class_path(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


def _encode(value, where):
    """A constructor argument as JSON (see the module doc); TypeError naming it when it cannot be."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return {"__dtype__": np.dtype(value).name}
    if isinstance(value, np.random.Generator):
        return None
    if isinstance(value, Module):
        return {"__module__": _describe(value)}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
    raise TypeError(f"module: constructor argument {where} is a {type(value).__name__}, which rnnfast.save cannot "
                    "record; define get_config() returning plain values (numbers, strings, lists, dtypes, modules)")


def _describe(module):
    """{"class": ..., "args": ...} of any rnnfast.Module (see the module doc)."""
    cls = type(module)
    if cls in _CLASSES.values():
        record = {"class": cls.__name__, "args": _layer_args(module)}
        # Only when not the default: files of float32 layers stay as before, and a reader that does not
        # know the key loads the layer as float32.
        if module.inference_weights != "float32":
            record["inference_weights"] = module.inference_weights
        return record
    if "<locals>" in cls.__qualname__ or _resolve(cls.__module__, cls.__qualname__) is not cls:
        raise TypeError(f"module: class {_class_path(cls)} cannot be found by its name (defined inside a function?); "
                        "rnnfast.load could not rebuild it")
    config = module.get_config()
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise TypeError(f"module: {cls.__name__}.get_config() must return a dict with str keys, "
                        f"got {type(config).__name__}")
    return {"class": _class_path(cls), "args": {k: _encode(v, f"{k!r} of {cls.__name__}") for k, v in config.items()}}


def _resolve(module_name, qualname):
    """The object named module:qualname, or None."""
    try:
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:  # noqa: BLE001 - any failure to import means "not found"
        return None
    return obj


def _fsync_dir(directory):
    """Make the rename durable (POSIX); best effort, e.g. not possible on Windows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_pattern(base):
    return re.compile(r"\." + re.escape(base) + r"\.[0-9a-f]{16}\.tmp\Z")


def _remove_stale_temporaries(directory, base):
    """Removes the temporary files of killed saves to the same target (see the module doc)."""
    pattern = _temp_pattern(base)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not pattern.match(name):
            continue
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY)
        except OSError:
            continue
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a save in progress holds it
            elif time.time() - os.fstat(fd).st_mtime < 3600:  # pragma: no cover - Windows
                continue
            os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def _open_temporary(directory, base):
    """(fd, path) of a new temporary file that this process holds the lock of."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # mode as a new file gets it under the umask
        except FileExistsError:  # pragma: no cover - 64 random bits collided
            continue
        if fcntl is None:  # pragma: no cover - Windows
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)  # pragma: no cover - another save's cleanup took it between creation and lock: retry


# =========================================================================================== save


def save(module, path):
    """Write an rnnfast module (its class, constructor arguments and weights) to ``path`` as an .npz archive,
    atomically: a previous file at ``path`` is replaced only by a complete new one. See the module doc.

    module: an ``rnnfast.Module`` whose class is importable by name. path: a file name (str or PathLike).
    """
    if not isinstance(module, Module):
        raise TypeError(f"module: expected an rnnfast.Module, got {type(module).__name__}")
    path = _check_path(path)
    described = _describe(module)
    if os.path.isdir(path):
        raise ValueError(f"path: {path!r} is a directory")
    arrays = module.state_dict()  # copies, in parameter order
    if METADATA_KEY in arrays:  # pragma: no cover - parameter names never look like this
        raise ValueError(f"module: a parameter is named {METADATA_KEY!r}, which the file format reserves")

    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **described, "rnnfast_version": VERSION}
    arrays[METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True))

    write_npz_atomically(path, arrays)


def saved_dtype(dtype) -> np.dtype:
    """The dtype of an array as rnnfast wrote it: NumPy's .npy header records ml_dtypes' bfloat16 as two raw bytes
    ("|V2"); rnnfast writes no other such arrays, so those are its bf16 parameters and states."""
    return BFLOAT16 if dtype == np.dtype("V2") else dtype


def as_saved(a: np.ndarray) -> np.ndarray:
    """An array read from an .npz rnnfast wrote, with its dtype as written (bf16 from "|V2": a view)."""
    dtype = saved_dtype(a.dtype)
    return a if dtype == a.dtype else a.view(dtype)


def write_npz_atomically(path, arrays):
    """np.savez(path, **arrays) so that ``path`` holds either its old content or the complete new archive,
    never a part (see the module doc; also used for training checkpoints). path: a str file name."""
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temporaries(directory, base)
    fd, tmp = _open_temporary(directory, base)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
            try:  # a file that is replaced keeps its permissions
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            except OSError:
                pass
            os.replace(tmp, path)  # still holding the lock: no cleanup can take the file before the rename
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)


# =========================================================================================== load


def _read_headers(npz, path, file_size):
    """{name: (shape, dtype)} of every member, from the .npy headers alone; ValueError for a member that is
    not a plain .npy array or that declares more data than the whole file holds."""
    declared = {}
    for name in npz.files:
        try:
            with npz.zip.open(name + ".npy") as m:
                version = np.lib.format.read_magic(m)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(m)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(m)
                else:
                    raise ValueError(f".npy format version {version} is not one rnnfast writes")
        except Exception as e:  # noqa: BLE001 - a damaged member, a non-.npy member, ...
            raise _bad(path, f"cannot read entry {name!r} ({type(e).__name__}: {e}); the file is damaged "
                             "or not an rnnfast file") from None
        if dtype.hasobject:
            raise _bad(path, f"entry {name!r} holds Python objects (dtype {dtype}), which rnnfast never unpickles")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > file_size:
            raise _bad(path, f"entry {name!r} declares shape {shape} of {dtype} ({nbytes} bytes) in a file of "
                             f"{file_size} bytes")
        declared[name] = (tuple(shape), saved_dtype(dtype))
    return declared


def _read_archive(f, path):
    """The metadata string, the declared (shape, dtype) of every array, and a function reading the arrays."""
    file_size = os.fstat(f.fileno()).st_size
    try:
        npz = np.load(f, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - whatever np.load makes of a damaged or foreign file
        raise _bad(path, f"not an .npz archive, or a damaged one ({type(e).__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _bad(path, "not an .npz archive (a single .npy array); not a file written by rnnfast.save")
    try:
        names = list(npz.files)
    except Exception as e:  # noqa: BLE001
        raise _bad(path, f"damaged .npz archive ({type(e).__name__}: {e})") from None
    if METADATA_KEY not in names:
        raise _bad(path, f"no rnnfast metadata (entry {METADATA_KEY!r}); not a file written by rnnfast.save "
                         f"(it holds {names})")
    declared = _read_headers(npz, path, file_size)

    def read(name):
        try:
            return as_saved(npz[name])
        except Exception as e:  # noqa: BLE001 - truncated/corrupt member
            raise _bad(path, f"cannot read entry {name!r} ({type(e).__name__}: {e}); the file is damaged "
                             "or not an rnnfast file") from None

    meta_shape, meta_dtype = declared.pop(METADATA_KEY)
    if meta_shape != () or meta_dtype.kind != "U":
        raise _bad(path, f"metadata entry {METADATA_KEY!r} is not a string")
    return str(read(METADATA_KEY)[()]), declared, read, npz


def _check_layer_args(cls_name, args, path):
    """(class, kwargs) of a version-1 RNN/LSTM/GRU record; ValueError naming a bad argument."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    spec = {"input_size": is_int, "hidden_size": is_int, "num_layers": is_int,
            "bias": lambda v: isinstance(v, bool), "batch_first": lambda v: isinstance(v, bool),
            "dropout": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
            "bidirectional": lambda v: isinstance(v, bool),
            "dtype": lambda v: v in ("float32", "float64", "bfloat16")}
    optional = {"recurrent_dropout": lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)}
    if cls_name == "LSTM":
        spec["proj_size"] = is_int
    elif cls_name == "RNN":
        spec["nonlinearity"] = lambda v: v in ("tanh", "relu")
    else:
        optional["linear_before_reset"] = lambda v: isinstance(v, bool)
    missing = [k for k in spec if k not in args]
    unexpected = [k for k in args if k not in spec and k not in optional]
    if missing or unexpected:
        raise _bad(path, f"constructor arguments of {cls_name}: "
                         + "; ".join(s for s in (f"missing {missing}" if missing else "",
                                                 f"unexpected {unexpected}" if unexpected else "") if s))
    checks = {**spec, **optional}
    for k, v in args.items():
        if not checks[k](v):
            raise _bad(path, f"constructor argument {k}={v!r} of {cls_name} is not valid")
    kwargs = dict(args)
    kwargs["dtype"] = check_dtype(args["dtype"])
    return _CLASSES[cls_name], kwargs


def _layer_values(cls_name, a):
    """How many parameter values an RNN/LSTM/GRU with these arguments holds (a closed form: nothing built);
    None for arguments its constructor will refuse anyway."""
    I, H, L, P = a["input_size"], a["hidden_size"], a["num_layers"], a.get("proj_size", 0)
    if min(I, H, L) < 1 or P < 0:
        return None
    G, D, S = _GATES[cls_name], 2 if a["bidirectional"] else 1, P or H
    per_dir = G * H * S + (2 * G * H if a["bias"] else 0) + P * H
    return D * (G * H * I + (L - 1) * G * H * D * S + L * per_dir)


def _decode(value, path, budget, depth=0, key=""):
    """A JSON constructor argument back to Python (sub-modules built); ValueError for what is refused."""
    if depth > _MAX_DEPTH:
        raise _bad(path, "constructor arguments nested too deeply")
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        if abs(value) > budget and "seed" not in key:
            raise _bad(path, f"constructor argument {key}={value} is larger than the file's {budget - _INT_SLACK} "
                             "parameter values allow")
        return value
    if isinstance(value, list):
        return [_decode(v, path, budget, depth + 1, key) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "__dtype__" and inner in ("float32", "float64", "int32", "int64"):
            return np.dtype(inner)
        if tag == "__dtype__" and inner == "bfloat16":
            return BFLOAT16
        if tag == "__tuple__" and isinstance(inner, list):
            return tuple(_decode(v, path, budget, depth + 1, key) for v in inner)
        if tag == "__dict__" and isinstance(inner, dict):
            return {k: _decode(v, path, budget, depth + 1, k) for k, v in inner.items()}
        if tag == "__module__" and isinstance(inner, dict):
            return _build(inner, path, budget, depth + 1)
    raise _bad(path, f"constructor argument {key or '?'}={value!r} is not a value rnnfast.save writes")


def _build(record, path, budget, depth=0):
    """The module a {"class", "args"} record describes, built with its constructor."""
    cls_name, args = record.get("class"), record.get("args")
    if not isinstance(args, dict):
        raise _bad(path, "metadata has no constructor arguments ('args')")
    if cls_name in _CLASSES:
        cls, kwargs = _check_layer_args(cls_name, args, path)
        n = _layer_values(cls_name, args)
        held = budget - _INT_SLACK
        # Far more than the file holds: refused before building. Near it: built, and the per-array comparison
        # names what is missing.
        if n is not None and n > 2 * held + _BUILD_SLACK:
            raise _bad(path, f"{cls_name}({', '.join(f'{k}={v!r}' for k, v in args.items())}) has {n} parameter "
                             f"values, far more than the file's {held}")
        pos = []
        kwargs["seed"] = 0
        inference_weights = record.get("inference_weights", "float32")
        if inference_weights not in INFERENCE_WEIGHTS:
            raise _bad(path, f"inference_weights={inference_weights!r} is not one of {list(INFERENCE_WEIGHTS)}")
    else:
        m = re.fullmatch(r"([A-Za-z_][\w.]*):([A-Za-z_][\w.]*)", cls_name) if isinstance(cls_name, str) else None
        cls = _resolve(m.group(1), m.group(2)) if m else None
        if cls is None:
            raise _bad(path, f"class {cls_name!r} is not one of {sorted(_CLASSES)} nor an importable "
                             "'package.module:ClassName'")
        if not (isinstance(cls, type) and issubclass(cls, Module)):
            raise _bad(path, f"class {cls_name!r} is not an rnnfast.Module subclass; refused")
        kwargs, pos = {}, []
        for k, v in args.items():
            v = _decode(v, path, budget, depth, k)
            if k.startswith("*"):
                if not isinstance(v, list):
                    raise _bad(path, f"constructor argument {k} of {cls_name} is not a list")
                pos = v
            else:
                kwargs[k] = v
    try:
        module = cls(*pos, **kwargs)
        if cls_name in _CLASSES:
            module.set_inference_weights(inference_weights)
        return module
    except (TypeError, ValueError, NotImplementedError) as e:
        raise _bad(path, f"this rnnfast cannot build {cls.__name__}({kwargs}): {e}") from None


def _parse_metadata(text, path):
    """The {"class", "args"} record of the metadata JSON; ValueError naming any problem."""
    try:
        meta = json.loads(text)
    except ValueError as e:
        raise _bad(path, f"metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _bad(path, "metadata is not a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise _bad(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT_VERSION:
        raise _bad(path, f"format version {version!r} is not supported (this rnnfast reads version {FORMAT_VERSION})")
    return meta


def load(path):
    """Read a module written by ``save``: a new module of the recorded class with the saved constructor
    arguments and weights (in training mode). ValueError, naming the problem, for a file that is not a
    complete rnnfast file of this format version or whose declared sizes do not add up (checked before
    anything is built); OSError (e.g. FileNotFoundError) when the file cannot be opened."""
    path = _check_path(path)
    with open(path, "rb") as f:
        text, declared, read, npz = _read_archive(f, path)
        with npz:
            meta = _parse_metadata(text, path)
            values = sum(int(np.prod(s, dtype=object)) for s, _ in declared.values())
            module = _build(meta, path, values + _INT_SLACK)
            params = dict(module.named_parameters())
            problems = []
            missing = [k for k in params if k not in declared]
            unexpected = [k for k in declared if k not in params]
            if missing:
                problems.append(f"missing arrays {missing}")
            if unexpected:
                problems.append(f"unexpected arrays {unexpected}")
            for k, p in params.items():
                if k not in declared:
                    continue
                shape, dtype = declared[k]
                if shape != p.data.shape:
                    problems.append(f"array {k!r} has shape {shape}, expected {p.data.shape}")
                elif dtype != p.data.dtype:
                    problems.append(f"array {k!r} has dtype {dtype}, expected {p.data.dtype}")
            if problems:
                raise _bad(path, f"does not match the {type(module).__name__} it describes: " + "; ".join(problems))
            arrays = {k: read(k) for k in params}
    for k, a in arrays.items():  # read back exactly as declared: a damaged member was caught by read()
        if a.shape != declared[k][0] or a.dtype != declared[k][1]:  # pragma: no cover - np.load reads the header
            raise _bad(path, f"array {k!r} does not match its header")
    module.load_state_dict(arrays)
    return module
