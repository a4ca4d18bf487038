"""Drawing a status document (:mod:`tunmesh.admin.status`) for people: the table of ``tunmesh status``.

Works on the JSON form only, so what a script reads with ``--json`` and what a person reads are the same
data. The table has one row per peer; below it, one indented block per peer with its session keys, drops
and what is wrong (with the hint), then the failing URLs, the recently removed peers and inbound refusals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ID_CHARS = 8


def duration(seconds: float | None) -> str:
    """``45s``, ``2m13s``, ``1h02m``, ``3d04h``; ``-`` for None."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if seconds < 10 and s == 0:
        return f"{seconds:.1f}s"
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{duration(seconds)} ago"


def count(n: int) -> str:
    """``950``, ``12.3k``, ``4.5M``, ``1.2G``."""
    for limit, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= limit:
            return f"{n / limit:.1f}{suffix}"
    return str(n)


def size(n: int) -> str:
    """``512 B``, ``3.4 KiB``, ``12.0 MiB``, ``1.5 GiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - unreachable, the loop returns at GiB


def short_id(node_id: str) -> str:
    return node_id[:ID_CHARS]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart; trailing blanks stripped."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    ]


def _link(direction: Mapping[str, Any] | None) -> str:
    if direction is None:
        return "-"
    return f"{direction['state']} {duration(direction['since_s'])}"


def _traffic(direction: Mapping[str, Any] | None) -> str:
    if direction is None:
        return "-"
    return f"{count(direction['packets'])} pk/{size(direction['bytes'])}"


def _rtt(out: Mapping[str, Any] | None) -> str:
    """The last RTT of a link that is up (a down link's last value is in the JSON, with its age)."""
    if out is None or out.get("rtt_ms") is None or out["state"] != "up":
        return "-"
    return f"{out['rtt_ms']:.2f}ms"


def _name(entry: Mapping[str, Any]) -> str:
    return entry.get("name") or "-"


def render_node(node: Mapping[str, Any]) -> list[str]:
    lines = [
        f"node {_name(node)}  id {node['id']}  {node['url']}",
        f"  version {node['version']}, up {duration(node['uptime_s'])}, {node['peers']} peer(s), "
        f"addresses {' '.join(node['addresses'].values()) or '-'}",
    ]
    if node["ready"]:
        lines.append("  ready: yes")
    else:
        lines.append("  ready: NO")
        lines.extend(f"    {item['check']}: {item['hint']}" for item in node["not_ready"])
    if not node.get("live", True):
        lines.append("  live: NO (see /health)")
    refusals = node.get("inbound_auth_failures") or {}
    if refusals.get("count"):
        lines.append(
            f"  inbound auth failures: {refusals['count']} (last: {refusals['reason']} on {refusals['where']}, "
            f"{ago(refusals['age_s'])})"
        )
        if refusals.get("hint"):
            lines.append(f"    hint: {refusals['hint']}")
    return lines


def render_peers(peers: Sequence[Mapping[str, Any]]) -> list[str]:
    if not peers:
        return ["no peers"]
    header = ("NAME", "ID", "STATE", "ENDPOINT", "OVERLAY", "LINK OUT", "LINK IN", "RTT", "TX", "RX", "CONTACT")
    rows = []
    for p in peers:
        out, inbound = p["link"]["out"], p["link"]["in"]
        rows.append(
            (
                _name(p),
                short_id(p["id"]),
                p["state"],
                p["url"],
                ",".join(a.split("/")[0] for a in p["addresses"]) or "-",
                _link(out),
                _link(inbound),
                _rtt(out),
                _traffic(out),
                _traffic(inbound),
                ago(p["last_contact_age_s"]),
            )
        )
    lines = table(header, rows)
    lines.append("")
    for p in peers:
        lines.extend(_peer_details(p))
    return lines


def _session(value: Mapping[str, Any] | None) -> str:
    return "none" if value is None else f"{value['kid']} ({duration(value['age_s'])} old)"


def _peer_details(p: Mapping[str, Any]) -> list[str]:
    lines = [f"{_name(p)} {p['id']}:"]
    lines.append(f"  keys: out {_session(p['sessions'].get('out'))}, in {_session(p['sessions'].get('in'))}")
    drops = p.get("drops") or {}
    if drops:
        lines.append("  drops: " + ", ".join(f"{reason} {n}" for reason, n in sorted(drops.items())))
    out = p["link"]["out"]
    path = out.get("datagram_path") if out is not None else None
    if path is not None:
        how = "small packets as datagrams" if path["state"] == "proven" else "not answering: all packets on the link"
        lines.append(f"  datagram path: {path['state']}, UDP {path['address']} ({how})")
    if out is not None and out["state"] != "up" and out.get("last_error"):
        lines.append(f"  link out: {out['last_error']} ({ago(out['last_error_age_s'])})")
    failure = p.get("last_failure")
    if failure is not None and failure["failures"]:
        status = f" (HTTP {failure['status']})" if failure.get("status") else ""
        lines.append(
            f"  {failure['operation']} failing: {failure['reason']}{status}, {failure['failures']} time(s), "
            f"last {ago(failure['age_s'])}: {failure['detail']}".rstrip(": ")
        )
    if p.get("hint"):
        lines.append(f"  hint: {p['hint']}")
    return lines


def render_urls(urls: Sequence[Mapping[str, Any]]) -> list[str]:
    failing = [u for u in urls if u["failures"]]
    if not failing:
        return []
    rows = [
        (u["url"], "yes" if u["bootstrap"] else "gossip", str(u["failures"]), ago(u["age_s"]),
         u["reason"] + (f" ({u['status']})" if u.get("status") else ""), u["hint"] or u["detail"])
        for u in failing
    ]
    return table(("URL", "FROM", "FAILURES", "LAST", "REASON", "HINT"), rows)


def render_removed(removed: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"removed: {_name(r)} {r['id']} ({r['url']}) {ago(r['age_s'])}: {r['reason']}" for r in removed]


def render_status(doc: Mapping[str, Any]) -> str:
    """The whole table (ends with a newline)."""
    sections = [render_node(doc["node"]), render_peers(doc["peers"]), render_urls(doc["urls"]),
                render_removed(doc["removed"])]
    lines: list[str] = []
    for section in sections:
        if section:
            if lines:
                lines.append("")
            lines.extend(section)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def render_reload(result: Mapping[str, Any]) -> str:
    """``tunmesh reload``'s answer: what was applied, refused, and what needs a restart."""
    lines = []
    for key, title in (("changed", "applied"), ("refused", "refused (running value kept; see the node's log)"),
                       ("restart_needed", "changed in the file, applied at the next start")):
        items = result.get(key) or []
        if items:
            lines.append(f"{title}:")
            lines.extend(f"  {item}" for item in items)
    return "\n".join(lines or ["no change"]) + "\n"
