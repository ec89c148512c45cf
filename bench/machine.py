"""What the bench runs on: the CPU, its cores and load, the core-to-core round trip, and which rnnfast."""
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_rnnfast():
    """(rnnfast or None, reference module or None, error text or None).

    The installed package comes first: the checkout's rnnfast/ (on sys.path under `python -m bench...`) has no
    compiled kernels unless it was built in place, which is the only case the checkout is used for.
    """
    saved = sys.path[:]
    errors = []
    for path in ([p for p in saved if os.path.abspath(p or os.curdir) != ROOT], saved + [ROOT]):
        sys.path[:] = path
        try:
            import rnnfast
            import rnnfast.reference as ref
            rnnfast.LSTM  # noqa: B018 -- a package without its kernels has no layers
            return rnnfast, ref, None
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            for name in [m for m in sys.modules if m == "rnnfast" or m.startswith("rnnfast.")]:
                del sys.modules[name]
        finally:
            sys.path[:] = saved
    return None, None, errors[-1]


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores():
    try:
        pairs = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in list(f) + [""]:
                if line.startswith("physical id"):
                    phys = line.split(":", 1)[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":", 1)[1].strip()
                elif not line.strip():
                    if core is not None:
                        pairs.add((phys, core))
                    phys = core = None
        return len(pairs) or None
    except OSError:
        return None


def loadavg():
    """1-minute load average at start: a busy machine makes every number here unreliable."""
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return None


def core_round_trip_ns():
    """The kernels' barrier round trip between two cores, or None where the extension does not measure it."""
    try:
        from _rnnfast import _C
        return min(_C.core_round_trip_ns(100000, max_ms=100.0) for _ in range(3))
    except (ImportError, AttributeError):
        return None


def rnnfast_info(rnnfast):
    """The instruction-set build of rnnfast's CPU kernels, or why it could not be read."""
    try:
        return str(rnnfast.isa())
    except Exception as e:  # noqa: BLE001 - say it in the header, do not lose the bench
        return f"isa() failed: {type(e).__name__}: {e}"


def rnnfast_tuning(rnnfast, dtype):
    """{"dict": rnnfast.backend.tuning(dtype), "lines": its report} (the choices the package made, timed inside a
    layer's training step), or None for an rnnfast without them."""
    try:
        return {"dict": rnnfast.backend.tuning(dtype), "lines": rnnfast.backend.tuning_lines(dtype)}
    except AttributeError:
        return None
    except Exception as e:  # noqa: BLE001 - say it in the header, do not lose the bench
        return {"dict": None, "lines": [f"rnnfast tuning failed: {type(e).__name__}: {e}"]}
