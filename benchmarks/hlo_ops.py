"""Counts of the operations an XLA program runs, read from `compiled.as_text()`.

On a CPU every top-level instruction of the optimised HLO (a fusion, a dot, a
gather, a copy, ...) is one kernel launch with a fixed cost, so at small network
sizes the count, not the FLOPs, sets the time of an update. Instructions inside a
fusion's computation run as part of that fusion and are not counted on their own;
instructions inside a while loop's body count once per iteration (XLA's proven trip
count), so the count of a jitted epoch of K updates is K times that of one update,
plus the loop's own bookkeeping.
"""

import re
from collections import Counter

# instructions that move no data and launch nothing
FREE_OPCODES = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id"}
# custom-call targets of matmul libraries: oneDNN on CPUs, cuBLAS / cuBLASLt on GPUs
MATMUL_CALL = re.compile(r'custom_call_target="[^"]*(matmul|gemm)', re.IGNORECASE)
HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
NAME = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*")


def opcode_of(line: str) -> str | None:
    """The opcode of one instruction line `%name = TYPE opcode(operands), attributes`."""
    match = NAME.match(line)
    if match is None:
        return None
    rest = line[match.end() :]
    if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
        depth = 0
        for end, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[end + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1] if " " in rest else ""
    opcode = re.match(r"\s*([\w\-]+)\(", rest)
    return opcode.group(1) if opcode else None


def split_computations(hlo_text: str) -> tuple[dict[str, list[str]], str]:
    """Every computation's instruction lines by name, and the name of the entry computation."""
    computations, entry, name = {}, "", None
    for line in hlo_text.splitlines():
        header = HEADER.match(line)
        if name is None and header:
            name = header.group(2)
            entry = name if header.group(1) else entry
            computations[name] = []
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None:
            computations[name].append(line)
    return computations, entry


def called(line: str, attribute: str) -> list[str]:
    """The computations an instruction names in `attribute=%name` or `attribute={%a, %b}`."""
    match = re.search(attribute + r"=(\{[^}]*\}|%?[\w.\-]+)", line)
    return [part.strip(" {}%") for part in match.group(1).split(",")] if match else []


def trip_count(line: str) -> int:
    """The trip count XLA proved for a while loop (1 when it proved none)."""
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
    return int(match.group(1)) if match else 1


def count_ops(hlo_text: str) -> dict:
    """Instruction launches by opcode, each counted as often as it runs in one call of the program:
    the body of a while loop XLA proved to run n times counts n times (so a scan of K updates counts K
    times, and the rolled threefry loops inside it 5 times more). `matmul` counts dots, matmul custom
    calls and fusions whose computation holds a dot; `fusion:<kind>` splits the fusions by kind."""
    computations, entry = split_computations(hlo_text)
    counts = Counter()

    def visit(name: str, times: int) -> None:
        for line in computations.get(name, []):
            opcode = opcode_of(line)
            if opcode is None or opcode in FREE_OPCODES:
                continue
            counts[opcode] += times
            if opcode == "fusion":
                inner = [
                    opcode_of(inner_line) for callee in called(line, "calls") for inner_line in computations[callee]
                ]
                kind = re.search(r"kind=(\w+)", line)
                counts[f"fusion:{kind.group(1) if kind else '?'}"] += times
                if "dot" in inner or "convolution" in inner:
                    counts["matmul"] += times
            elif opcode == "dot" or (opcode == "custom-call" and MATMUL_CALL.search(line)):
                counts["matmul"] += times
            elif opcode == "while":
                iterations = trip_count(line)
                for callee in called(line, "condition"):
                    visit(callee, times * (iterations + 1))
                for callee in called(line, "body"):
                    visit(callee, times * iterations)
            elif opcode in ("call", "conditional", "async-start"):
                for callee in called(line, "calls") + called(line, "to_apply") + called(line, "branch_computations"):
                    visit(callee, times)  # a conditional's branches: an upper bound

    visit(entry, 1)
    return {
        "launches": sum(n for opcode, n in counts.items() if ":" not in opcode and opcode != "matmul"),
        "matmul": counts["matmul"],
        "by_opcode": dict(counts.most_common()),
    }
