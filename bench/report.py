"""The comparison as Markdown tables (printed, and pasteable into docs/benchmarks.md).

The headline (max passing deliveries/s and server µs per delivery, memory per
idle connection, as in the issues), the best attempt of every point in detail
(latency, how busy each core was, the load average), the idle measurements,
realtime's ratios to each peer and, for the Socket.IO comparison, issue 11's goals.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bench.results import Attempt, Idle, Point

LABELS = {
    "realtime": "realtime (embedded)",
    "realtime-redis": "realtime (Redis broker)",
    "socketio": "python-socketio",
    "socketio-redis": "python-socketio (Redis manager)",
    "realtime-socketio": "realtime over /socket.io/",
    "socketio-node": "Node Socket.IO 4",
    "bare": "limit: bare, one frame per socket",
}


def label(server: str) -> str:
    return LABELS.get(server, server)


def headline_cell(point: Point | None) -> str:
    if point is None:
        return "—"
    best = point.best
    if best is None:
        cost = point.failed_cost
        return "fails at every rate tried" + (f" (~{cost:.0f} µs)" if cost is not None else "")
    bound = "≥ " if point.generator_limited else ""
    noisy = " ‡" if best.noisy else ""
    return f"{bound}{best.deliveries_per_s or 0:,.0f}/s ({best.server_us_per_delivery} µs){noisy}"


def idle_cell(idle: Idle | None) -> str:
    if idle is None:
        return "—"
    if idle.bytes_per_connection is None:
        return f"failed: {(idle.error or 'no figure')[:60]}"
    connected = "" if idle.complete else f", only {idle.report and idle.report.get('connections')}"
    return f"{idle.bytes_per_connection / 1024:.1f} KB{connected}"


def headline(
    servers: Sequence[str], subscribers: Sequence[int], points: list[Point], idles: list[Idle]
) -> list[str]:
    by_key = {(p.server, p.subscribers): p for p in points}
    lines = [
        "| S subscribers | " + " | ".join(label(s) for s in servers) + " |",
        "|---" * (len(servers) + 1) + "|",
    ]
    for count in subscribers:
        cells = [headline_cell(by_key.get((s, count))) for s in servers]
        lines.append(f"| {count:,} | " + " | ".join(cells) + " |")
    if idles:
        by_server = {i.server: i for i in idles}
        count = idles[0].connections
        cells = [idle_cell(by_server.get(s)) for s in servers]
        lines.append(f"| memory per idle connection ({count:,}) | " + " | ".join(cells) + " |")
    return lines


def details(points: list[Point]) -> list[str]:
    lines = [
        "| server | S | best offered | delivered/s | delivered | p50 | p99 | server µs/delivery "
        "| server CPU (its core) | generator CPU (its core) | load avg | attempts |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for point in points:
        best = point.best
        tried = len(point.attempts)
        if best is None:
            reasons = "; ".join(sorted({a.reason for a in point.attempts}))[:120]
            lines.append(
                f"| {label(point.server)} | {point.subscribers:,} | none passed: {reasons} "
                f"| | | | | | | | | {tried} |"
            )
            continue
        lines.append(
            f"| {label(point.server)} | {point.subscribers:,} | {best.offered:,.0f}/s "
            f"| {best.deliveries_per_s or 0:,.0f} | {percent(best.delivered_ratio)} "
            f"| {best.p50_ms} ms | {best.p99_ms} ms | {best.server_us_per_delivery} "
            f"| {cpu(best.server_share, best.server_core)} "
            f"| {cpu(best.generator_share, best.generator_core)} | {best.load_text} | {tried} |"
        )
    return lines


def idle_details(idles: list[Idle]) -> list[str]:
    lines = [
        "| server | joined | per connection | server RSS before → after | load avg |",
        "|---|---|---|---|---|",
    ]
    for idle in idles:
        report = idle.report or {}
        rss = f"{report.get('server_rss_before_mb')} → {report.get('server_rss_after_mb')} MB"
        joined = report.get("connections", "?")
        lines.append(
            f"| {label(idle.server)} | {joined} | {idle_cell(idle)} | "
            f"{rss if idle.report else '—'} | {idle.load_text} |"
        )
    return lines


def cpu(share: float | None, core: float | None) -> str:
    """A process's CPU use and, in brackets, how busy its core was (anyone's use)."""
    return f"{percent(share, 0)} ({percent(core, 0)})"


def percent(value: float | None, digits: int = 2) -> str:
    return "?" if value is None else f"{100 * value:.{digits}f}%"


def ratio(ours: Point | None, theirs: Point | None) -> str:
    """realtime's throughput over the other's (and its CPU per delivery over the other's)."""
    if ours is None or theirs is None or ours.best is None:
        return "—"
    if theirs.best is None:
        return "they fail at every rate tried"
    mine, other = ours.best, theirs.best
    text = f"{(mine.deliveries_per_s or 0) / (other.deliveries_per_s or 1):.2f}x"
    if mine.server_us_per_delivery and other.server_us_per_delivery:
        text += f" (CPU {mine.server_us_per_delivery / other.server_us_per_delivery:.2f}x)"
    if ours.generator_limited or theirs.generator_limited:
        text += " †"
    return text


def ratios(
    servers: Sequence[str], subscribers: Sequence[int], points: list[Point], idles: list[Idle]
) -> list[str]:
    """realtime against every other contender, per S, in throughput (and CPU)."""
    by_key = {(p.server, p.subscribers): p for p in points}
    ours = [s for s in servers if s.startswith("realtime")]
    # The Redis broker (or the Socket.IO encoding) against the plain in-process server
    # (the broker's target is ≥ 80%), then each of ours against every peer.
    pairs = [(a, "realtime") for a in ours if a != "realtime" and "realtime" in ours]
    pairs += [(a, b) for a in ours for b in servers if b not in ours]
    if not pairs:
        return []
    lines = [
        "| S | " + " | ".join(f"{label(a)} ÷ {label(b)}" for a, b in pairs) + " |",
        "|---" * (len(pairs) + 1) + "|",
    ]
    for count in subscribers:
        cells = [ratio(by_key.get((a, count)), by_key.get((b, count))) for a, b in pairs]
        lines.append(f"| {count:,} | " + " | ".join(cells) + " |")
    by_server = {i.server: i.bytes_per_connection for i in idles}
    if idles:
        cells = [memory_ratio(by_server.get(a), by_server.get(b)) for a, b in pairs]
        lines.append("| memory per idle connection | " + " | ".join(cells) + " |")
    return lines


def memory_ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "—"


SOCKETIO_GOALS = ("realtime-socketio", "socketio-node", "socketio")


def goals(subscribers: Sequence[int], points: list[Point], idles: list[Idle]) -> list[str]:
    """Issue 11's goals, met or not, when its three contenders took part."""
    ours, node, python = SOCKETIO_GOALS
    by_key = {(p.server, p.subscribers): p.best for p in points}
    lines = ["| goal | " + " | ".join(f"S = {c:,}" for c in subscribers) + " |"]
    lines.append("|---" * (len(subscribers) + 1) + "|")

    def row(goal: str, check: Callable[[Attempt, Attempt], bool | None], peer: str) -> None:
        cells = []
        for count in subscribers:
            mine, theirs = by_key.get((ours, count)), by_key.get((peer, count))
            if mine is None:
                cells.append("no passing figure of ours")
            elif theirs is None:
                cells.append("met: theirs fails at every rate tried")
            else:
                verdict = check(mine, theirs)
                cells.append("?" if verdict is None else "met" if verdict else "**not met**")
        lines.append(f"| {goal} | " + " | ".join(cells) + " |")

    row("deliveries/s ≥ Node Socket.IO's", lambda a, b: rate(a) >= rate(b), node)
    row("server CPU per delivery ≤ Node Socket.IO's", cost_at_most, node)
    row("deliveries/s ≥ 5 times python-socketio's", lambda a, b: rate(a) >= 5 * rate(b), python)
    memory = {i.server: i.bytes_per_connection for i in idles}
    if memory.get(ours) is not None and memory.get(node) is not None:
        verdict = "met" if (memory[ours] or 0) < (memory[node] or 0) else "**not met**"
        cells = [f"{verdict} (one figure for every S)"] + [""] * (len(subscribers) - 1)
        lines.append(
            "| idle memory per connection < Node Socket.IO's | " + " | ".join(cells) + " |"
        )
    return lines


def rate(attempt: Attempt) -> float:
    return attempt.deliveries_per_s or 0.0


def cost_at_most(mine: Attempt, theirs: Attempt) -> bool | None:
    if mine.server_us_per_delivery is None or theirs.server_us_per_delivery is None:
        return None
    return mine.server_us_per_delivery <= theirs.server_us_per_delivery


def markdown(
    command: str,
    environment: str,
    servers: Sequence[str],
    subscribers: Sequence[int],
    points: list[Point],
    idles: list[Idle],
) -> str:
    parts = [
        "```sh",
        command,
        "```",
        "",
        environment,
        "",
        "Max deliveries/s that pass (≥ 99.9% delivered, p99 < 250 ms), server CPU µs per "
        "delivery in brackets; ≥: the generator core was saturated, so the figure is a "
        "lower bound; ‡: other work shared the cores during that attempt. Load avg: "
        "the 1-minute load average at the start and at the end of the attempt (server "
        "and generator make about 2 of it).",
        "",
        *headline(servers, subscribers, points, idles),
        "",
        "Best passing attempt of each point. CPU: the process's share of one core over the "
        "publishing window, and in brackets how busy that core was, whoever used it "
        "(loopback network work lands there too):",
        "",
        *details(points),
    ]
    if idles:
        parts += ["", "Idle joined connections:", "", *idle_details(idles)]
    ratio_lines = ratios(servers, subscribers, points, idles)
    if ratio_lines:
        parts += [
            "",
            "Ratios of max deliveries/s (and of server CPU per delivery; † a lower bound "
            "took part), and of memory per idle connection:",
            "",
            *ratio_lines,
        ]
    if all(s in servers for s in SOCKETIO_GOALS):
        parts += ["", "Issue 11's goals:", "", *goals(subscribers, points, idles)]
    return "\n".join(parts) + "\n"
