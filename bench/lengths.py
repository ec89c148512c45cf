"""Variable lengths: a batch at full length against the same batch with lengths uniform in [1, T]. rnnfast's
packed kernels should cost in proportion to the real tokens; torch runs a PackedSequence."""
import numpy as np

from .timing import time_runs


def lengths_section(rnnfast, torch, dtype, modes, timing, seed, T=100, B=64, I=256, H=512):
    """Prints the table; returns its rows."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, size=B)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    m = rnnfast.LSTM(I, H, dtype=dtype, seed=seed)
    tm = None
    if torch is not None:
        tm = torch.nn.LSTM(I, H).to(torch.float64 if dtype == np.float64 else torch.float32)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    tokens = int(lengths.sum())
    print(f"\nVariable lengths: LSTM T={T} B={B} I={I} H={H}, lengths uniform in [1, {T}] "
          f"({tokens} of {T * B} tokens, {tokens / (T * B):.2f})")
    print("| mode | rnnfast full ms | rnnfast lengths ms | ratio | torch full ms | torch packed ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = []
    for mode in modes:
        def rf(lens):
            if mode == "infer":
                m.eval()
                return lambda: m(x, lengths=lens)
            m.train()
            return lambda: (m(x, lengths=lens), m.backward(dy))
        full = time_runs(rf(None), timing, setup=m.zero_grad)[0]
        part = time_runs(rf(lengths), timing, setup=m.zero_grad)[0]
        tfull = tpart = None
        if tm is not None:
            tx, tdy, tl = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)

            def tf(packed):
                def run():
                    inp = torch.nn.utils.rnn.pack_padded_sequence(tx, tl, enforce_sorted=False) if packed else tx
                    if mode == "infer":
                        with torch.no_grad():
                            return tm(inp)
                    tm.zero_grad()
                    out = tm(inp)[0]
                    if packed:
                        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
                    out.backward(tdy)
                return run
            tfull = time_runs(tf(False), timing)[0]
            tpart = time_runs(tf(True), timing)[0]
        tcols = f"{tfull * 1e3:.2f} | {tpart * 1e3:.2f} | {tpart / tfull:.2f}" if tfull else "n/a | n/a | n/a"
        print(f"| {mode} | {full * 1e3:.2f} | {part * 1e3:.2f} | {part / full:.2f} | {tcols} |")
        rows.append({"mode": mode, "rnnfast_full_s": full, "rnnfast_lengths_s": part,
                     "torch_full_s": tfull, "torch_packed_s": tpart, "token_fraction": tokens / (T * B)})
    return rows
