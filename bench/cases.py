"""The benchmark's cases: the default set, the sweep grid, the --quick sizes, and the filters that pick subsets."""
from dataclasses import dataclass, replace

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass(frozen=True)
class Case:
    cell: str  # "lstm", "gru" or "rnn"
    nonlin: str  # "tanh" or "relu" for "rnn", else None
    T: int
    B: int
    I: int
    H: int
    # The case of the full-size set that this one stands for (itself, or the case --quick shrank): the
    # headline targets are keyed on it, so a --quick run still walks the target code.
    full: "Case" = None

    @property
    def name(self):
        label = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[self.cell]
        if self.cell == "rnn":
            label += " " + self.nonlin
        return f"{label} T={self.T} B={self.B} I={self.I} H={self.H}"

    @property
    def reference_cell(self):
        """The cell name rnnfast.reference takes."""
        return f"rnn_{self.nonlin}" if self.cell == "rnn" else self.cell

    @property
    def original(self):
        return self.full or self

    def flops(self, mode):
        """Forward = 2*T*B*G*H*(I+H); training (forward + backward) = 3x forward."""
        forward = 2.0 * self.T * self.B * GATES[self.cell] * self.H * (self.I + self.H)
        return forward if mode == "infer" else 3.0 * forward


def case(cell, T, B, I, H, nonlin=None):
    return Case(cell, nonlin if cell != "rnn" else (nonlin or "tanh"), T, B, I, H)


DEFAULT_CASES = [
    case("lstm", 100, 1, 64, 256),
    case("lstm", 100, 64, 256, 512),
    case("gru", 100, 64, 256, 512),
    case("rnn", 100, 64, 256, 512, "tanh"),
    case("lstm", 1000, 1, 32, 64),
]

SWEEP_CELLS = ("lstm", "gru")
SWEEP_H = (64, 128, 256, 512, 1024)
SWEEP_B = (1, 8, 64)
SWEEP_T = 100


def sweep_cases():
    """Issue 8's grid: LSTM and GRU, T=100, I=H, H x B."""
    return [case(c, SWEEP_T, B, H, H) for c in SWEEP_CELLS for H in SWEEP_H for B in SWEEP_B]


def quick(c):
    """A tiny stand-in for case c (a smoke test runs in seconds), remembering which case it stands for."""
    # Distinct sizes stay distinct (B 1, 8, 64 -> 1, 2, 4; H 64..1024 -> 4..64), so no two cases merge.
    return replace(c, T=max(5, c.T // 20), B=max(1, round(c.B ** (1 / 3))), I=max(4, c.I // 16),
                   H=max(4, c.H // 16), full=c)


def select(cases, substrings=None, cells=None, H=None, B=None):
    """The cases matching every given filter: any of `substrings` in the name (case-insensitive), cell in
    `cells`, H in `H`, B in `B`. Filters apply to the full-size case, so --quick picks the same ones."""
    subs = [s.lower() for s in substrings or []]
    return [c for c in cases
            if (not subs or any(s in c.original.name.lower() for s in subs))
            and (not cells or c.cell in cells)
            and (not H or c.original.H in H)
            and (not B or c.original.B in B)]
