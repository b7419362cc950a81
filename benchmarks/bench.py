"""Side-by-side benchmark of obs-backup against GNU tar on the same files.

Generates a deterministic corpus shaped like application data, then times, in one run
and alternating, each obs-backup command against the GNU tar command doing the same
job: GNU tar is asked for what our archives hold (pax format with nanosecond times,
extended attributes, ACLs, sparse files), and restores them the same way. Reports
the median wall time over the repeats, the ratio to the anchor, the
archive size ratio and each child's peak RSS (from ``wait4``), as a table and as JSON.

    python benchmarks/bench.py                 # ~600 MB corpus, 3 repeats
    python benchmarks/bench.py --scale 0.01    # tiny, for CI: checks it still works

Nothing here asserts on time: the table is for people, the JSON for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 1 << 20
# GNU tar doing the same work as obs-backup: what each archive holds beyond names,
# modes and data (nanosecond times, extended attributes, ACLs, holes), and restoring it.
TAR_CREATE = ["--posix", "--xattrs", "--acls", "--sparse"]
TAR_EXTRACT = ["--xattrs", "--acls"]
GNU_TIME = "/usr/bin/time"
WORDS = [
    "GET",
    "POST",
    "/api/v1/orders",
    "/api/v1/users",
    "200",
    "404",
    "500",
    "INFO",
    "WARN",
    "ERROR",
    "user_id",
    "order_id",
    "latency_ms",
    "status",
    "payload",
    "session",
    "token",
    "retry",
    "cache",
    "hit",
    "miss",
    "db",
    "query",
    "select",
    "insert",
    "update",
    "commit",
    "rollback",
    "worker",
]


# -- corpus -------------------------------------------------------------------------


def _text(rng: random.Random, size: int) -> bytes:
    """Log- or JSON-like text of about ``size`` bytes."""
    lines = []
    total = 0
    while total < size:
        if rng.random() < 0.5:
            line = (
                f"2026-11-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d}Z {rng.choice(WORDS)} {' '.join(rng.choices(WORDS, k=rng.randint(3, 12)))} "
                f"{rng.randint(0, 10**6)}\n"
            )
        else:
            line = (
                json.dumps({rng.choice(WORDS): rng.randint(0, 10**5), "v": rng.choice(WORDS), "n": rng.random()}) + "\n"
            )
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def make_corpus(root: Path, scale: float, seed: int = 2026) -> dict[str, int]:
    """Create the mixed corpus under ``root``; return counts and bytes."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    pool = _text(rng, 4 * MB)  # small files are slices of one pool: cheap to make, still text-like
    small = max(20, int(20_000 * scale))
    dirs = max(4, int(300 * scale))
    for index in range(dirs):
        (root / "app" / f"d{index:03d}").mkdir(parents=True)
    total = 0
    for index in range(small):
        size = rng.randint(200, 16 * 1024)
        start = rng.randint(0, len(pool) - size)
        path = root / "app" / f"d{index % dirs:03d}" / f"f{index:05d}.txt"
        path.write_bytes(pool[start : start + size])
        total += size
    (root / "logs").mkdir()
    for index in range(max(2, int(200 * scale))):
        size = rng.randint(100 * 1024, 2 * MB)
        suffix = "json" if index % 2 else "log"
        (root / "logs" / f"part{index:03d}.{suffix}").write_bytes(_text(rng, size))
        total += size
    (root / "blobs").mkdir()
    big = max(MB, int(40 * MB * scale))
    text_half = _text(rng, big // 2)
    for index in range(6):
        with open(root / "blobs" / f"blob{index}.bin", "wb") as handle:
            handle.write(rng.randbytes(big // 2))
            handle.write(text_half)
        total += big // 2 + len(text_half)
    (root / "empty-dir").mkdir()
    (root / "current.log").symlink_to("logs/part000.log")
    return {"files": small + max(2, int(200 * scale)) + 6, "bytes": total}


def make_empty_corpus(root: Path, scale: float) -> dict[str, int]:
    """Create the per-file-overhead corpus: many empty files in 100 directories."""
    count = max(100, int(100_000 * scale))
    for index in range(100):
        (root / f"d{index:02d}").mkdir(parents=True)
    for index in range(count):
        (root / f"d{index % 100:02d}" / f"e{index:06d}").touch()
    return {"files": count, "bytes": 0}


def make_big_corpus(root: Path, scale: float) -> dict[str, int]:
    """Create one large file (2 GiB at scale 1): memory must not grow with it."""
    size = max(8 * MB, int(2048 * MB * scale))
    root.mkdir(parents=True)
    rng = random.Random(7)
    chunk = rng.randbytes(4 * MB) + _text(rng, 4 * MB)
    with open(root / "huge.bin", "wb") as handle:
        written = 0
        while written < size:
            piece = chunk[: size - written]
            handle.write(piece)
            written += len(piece)
    return {"files": 1, "bytes": size}


# -- timing -------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    max_rss_mb: float
    cpu_seconds: float = 0.0  # user + system
    server_cpu_seconds: float | None = None  # the object store's, for the S3 rows


@dataclass
class Row:
    work: str
    ours_cmd: str
    anchor_cmd: str
    ours: list[Sample] = field(default_factory=list)
    anchor: list[Sample] = field(default_factory=list)
    ours_size: int | None = None
    anchor_size: int | None = None
    target: str = ""

    def median(self, samples: list[Sample]) -> float:
        return statistics.median(s.seconds for s in samples) if samples else float("nan")

    def summary(self) -> dict[str, object]:
        ours, anchor = self.median(self.ours), self.median(self.anchor)
        return {
            "work": self.work,
            "ours_s": round(ours, 3),
            "anchor_s": round(anchor, 3),
            "ratio": round(ours / anchor, 3) if anchor else None,
            "size_ratio": round(self.ours_size / self.anchor_size, 4) if self.ours_size and self.anchor_size else None,
            "ours_peak_rss_mb": round(max((s.max_rss_mb for s in self.ours), default=0), 1),
            "ours_cpu_s": round(statistics.median(s.cpu_seconds for s in self.ours), 3) if self.ours else None,
            "anchor_cpu_s": round(statistics.median(s.cpu_seconds for s in self.anchor), 3) if self.anchor else None,
            "server_cpu_s": _median_server_cpu(self.ours),
            "anchor_peak_rss_mb": round(max((s.max_rss_mb for s in self.anchor), default=0), 1),
            "target": self.target,
            "ours_cmd": self.ours_cmd,
            "anchor_cmd": self.anchor_cmd,
        }


def _median_server_cpu(samples: list[Sample]) -> float | None:
    known = [s.server_cpu_seconds for s in samples if s.server_cpu_seconds is not None]
    return round(statistics.median(known), 3) if known else None


def process_cpu_seconds(pid: int) -> float:
    """Given a process id, return the CPU time (user + system) it has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(argv: list[str], cwd: Path | None = None) -> Sample:
    """Run a command; return its wall time and peak RSS; raise if it fails.

    The peak RSS comes from GNU time, which forks the command from its own small
    process: a child forked from this (much larger) Python process would report this
    process's pages as its own high-water mark.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        started = time.perf_counter()
        finished = subprocess.run(
            [GNU_TIME, "-f", "%M %U %S", "-o", report.name, *argv],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if finished.returncode != 0:
            raise SystemExit(
                f"benchmark command failed ({finished.returncode}): {' '.join(argv)}\n"
                + finished.stderr.decode(errors="replace")
            )
        max_rss_kb, user, system = report.read().strip().splitlines()[-1].split()
    return Sample(elapsed, int(max_rss_kb) / 1024, float(user) + float(system))


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def only_file(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern} in {directory}, found {found}")
    return found[0]


def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(args.workdir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    obs = [sys.executable, "-m", "backup"]
    tar = shutil.which("tar") or "tar"

    print(f"generating corpora at scale {args.scale} in {work} ...", flush=True)
    corpus, empty, big = work / "corpus", work / "empty", work / "big"
    info = {"corpus": make_corpus(corpus, args.scale), "empty": make_empty_corpus(empty, args.scale)}
    if not args.skip_big:
        info["big"] = make_big_corpus(big, args.scale)

    rows: list[Row] = []
    out = work / "out"

    def create_pair(name: str, comp: str, tar_flags: list[str], source: Path, target: str, ext: str) -> Row:
        row = Row(
            name,
            f"obs-backup create SRC DIR --compression {comp}",
            f"tar {' '.join(tar_flags)} ARCHIVE -C SRC .",
            target=target,
        )
        for _ in range(args.repeats):
            ours_dir = fresh(out / "ours")
            row.ours.append(timed([*obs, "create", str(source), str(ours_dir), "--compression", comp, "--quiet"]))
            row.ours_size = only_file(ours_dir, f"*{ext}").stat().st_size
            anchor_dir = fresh(out / "anchor")
            archive = anchor_dir / f"anchor{ext}"
            row.anchor.append(timed([tar, *tar_flags, str(archive), "-C", str(source), "."]))
            row.anchor_size = archive.stat().st_size
        rows.append(row)
        return row

    def restore_pair(name: str, comp: str, tar_flags: list[str], source: Path, target: str, ext: str) -> None:
        keep = fresh(out / f"keep-{comp}")
        timed([*obs, "create", str(source), str(keep), "--compression", comp, "--quiet"])
        archive = only_file(keep, f"*{ext}")
        anchor_archive = keep / f"anchor{ext}"
        timed(
            [
                tar,
                *TAR_CREATE,
                *(["--zstd", "-cf"] if comp == "zst" else ["-czf"]),
                str(anchor_archive),
                "-C",
                str(source),
                ".",
            ]
        )
        row = Row(
            name, f"obs-backup restore ARCHIVE DIR ({comp})", f"tar {' '.join(tar_flags)} ARCHIVE -C DIR", target=target
        )
        verify = Row(
            f"verify, {comp}",
            f"obs-backup verify ARCHIVE ({comp})",
            f"obs-backup restore ARCHIVE DIR ({comp})",
            target="<= 1.0 x restore",
        )
        for _ in range(args.repeats):
            row.ours.append(timed([*obs, "restore", str(archive), str(out / "r-ours"), "--quiet"]))
            shutil.rmtree(out / "r-ours")
            row.anchor.append(timed([tar, *tar_flags, str(anchor_archive), "-C", str(fresh(out / "r-anchor"))]))
            shutil.rmtree(out / "r-anchor")
            verify.ours.append(timed([*obs, "verify", str(archive), "--quiet"]))
        verify.anchor = row.ours
        rows.extend([row, verify])

    print("timing (alternating obs-backup and GNU tar) ...", flush=True)

    def wanted(name: str) -> bool:
        return args.only is None or args.only in name

    if wanted("create, gz"):
        create_pair("create, gz", "gz", [*TAR_CREATE, "-czf"], corpus, "<= 0.6 x, size <= 1.02 x", ".tar.gz")
    if wanted("create, zst"):
        create_pair(
            "create, zst", "zst", [*TAR_CREATE, "--zstd", "-cf"], corpus, "<= 1.5 x, size <= 1.02 x", ".tar.zst"
        )
    if wanted("restore+verify, gz"):
        restore_pair("restore+verify, gz", "gz", [*TAR_EXTRACT, "-xzf"], corpus, "<= 1.3 x", ".tar.gz")
    if wanted("restore+verify, zst"):
        restore_pair("restore+verify, zst", "zst", [*TAR_EXTRACT, "--zstd", "-xf"], corpus, "<= 1.5 x", ".tar.zst")
    if wanted("create, 100k empty files, none"):
        create_pair("create, 100k empty files, none", "none", [*TAR_CREATE, "-cf"], empty, "<= 10 x", ".tar")
    if not args.skip_big and wanted("create, one huge file, zst"):
        big_row = create_pair(
            "create, one huge file, zst", "zst", [*TAR_CREATE, "--zstd", "-cf"], big, "peak RSS flat", ".tar.zst"
        )
        big_row.target = "peak RSS like the corpus"
    if any(wanted(name) for name in AGE_ROWS):
        rows.extend(encryption_rows(args, obs, work, corpus, None if args.skip_big else big, wanted))
    if not args.skip_s3 and any(wanted(name) for name in S3_ROWS):
        rows.extend(s3_rows(args, obs, work, corpus, None if args.skip_big else big, wanted))
    shutil.rmtree(out, ignore_errors=True)

    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "tar": subprocess.run([tar, "--version"], capture_output=True, text=True).stdout.splitlines()[0],
        },
        "scale": args.scale,
        "repeats": args.repeats,
        "corpora": info,
        "rows": [row.summary() for row in rows],
    }
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


AGE_ROWS = ("create, zst, encrypted", "restore, zst, encrypted", "create, one huge file, zst, encrypted")


def encryption_rows(
    args: argparse.Namespace, obs: list[str], work: Path, corpus: Path, big: Path | None, wanted: Any
) -> list[Row]:
    """The encryption rows: each times obs-backup encrypting to an age recipient (or
    decrypting with its identity) against the same command without encryption (the
    anchor), on the same corpus, alternating."""
    from pyrage import x25519

    identity = x25519.Identity.generate()
    recipient = str(identity.to_public())
    key = work / "age-key.txt"
    key.write_text(f"{identity}\n")
    out = work / "age-out"
    rows: list[Row] = []

    def create_row(name: str, source: Path, target: str) -> Row:
        row = Row(name, "obs-backup create SRC DIR --encrypt-to age1...", "obs-backup create SRC DIR", target=target)
        for _ in range(args.repeats):
            sealed = fresh(out / "sealed")
            row.ours.append(
                timed(
                    [*obs, "create", str(source), str(sealed), "--compression", "zst", "--encrypt-to", recipient, "-q"]
                )
            )
            row.ours_size = only_file(sealed, "*.tar.zst.age").stat().st_size
            plain = fresh(out / "plain")
            row.anchor.append(timed([*obs, "create", str(source), str(plain), "--compression", "zst", "-q"]))
            row.anchor_size = only_file(plain, "*.tar.zst").stat().st_size
        return row

    if wanted("create, zst, encrypted"):
        rows.append(create_row("create, zst, encrypted", corpus, "<= 1.15 x unencrypted"))
    if wanted("restore, zst, encrypted"):
        sealed, plain = fresh(out / "keep-sealed"), fresh(out / "keep-plain")
        timed([*obs, "create", str(corpus), str(sealed), "--compression", "zst", "--encrypt-to", recipient, "-q"])
        timed([*obs, "create", str(corpus), str(plain), "--compression", "zst", "-q"])
        row = Row(
            "restore, zst, encrypted",
            "obs-backup restore ARCHIVE.age DIR --identity KEY",
            "obs-backup restore ARCHIVE DIR",
            target="<= 1.15 x unencrypted",
        )
        for _ in range(args.repeats):
            target = out / "r-sealed"
            archive = only_file(sealed, "*.tar.zst.age")
            row.ours.append(timed([*obs, "restore", str(archive), str(target), "--identity", str(key), "-q"]))
            shutil.rmtree(target)
            target = out / "r-plain"
            row.anchor.append(timed([*obs, "restore", str(only_file(plain, "*.tar.zst")), str(target), "-q"]))
            shutil.rmtree(target)
        rows.append(row)
    if big is not None and wanted("create, one huge file, zst, encrypted"):
        rows.append(create_row("create, one huge file, zst, encrypted", big, "peak RSS flat, like unencrypted"))
    shutil.rmtree(out, ignore_errors=True)
    return rows


S3_ROWS = ("create to S3, zst", "restore from S3, zst", "create to S3, one huge file, zst")


def s3_rows(
    args: argparse.Namespace, obs: list[str], work: Path, corpus: Path, big: Path | None, wanted: Any
) -> list[Row]:
    """The object-storage rows, against SeaweedFS on loopback started for them: each
    one times obs-backup with an s3:// location against the same command with a local
    directory (the anchor), on the same corpus, alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.s3servers import ServerUnavailable, start_seaweedfs

    rows: list[Row] = []
    out = work / "s3-out"
    try:
        server_context = start_seaweedfs(fresh(work / "seaweedfs"))
        server = server_context.__enter__()
    except ServerUnavailable as exc:
        print(f"\n*** S3 rows SKIPPED: SeaweedFS unavailable: {exc.reason} ***\n", flush=True)
        return rows
    saved = dict(os.environ)
    os.environ.update(server.env())
    try:
        bucket = server.make_bucket()
        runs = iter(range(1_000_000))

        def location() -> str:
            return f"s3://{bucket}/run-{next(runs)}"

        def against_server(argv: list[str]) -> Sample:
            """Time a command, and what the object store spent on it too (its CPU
            competes with ours on this machine; on a real deployment it is elsewhere)."""
            assert server.pid is not None
            before = process_cpu_seconds(server.pid)
            sample = timed(argv)
            sample.server_cpu_seconds = process_cpu_seconds(server.pid) - before
            return sample

        def create_row(name: str, source: Path, target: str) -> Row:
            row = Row(name, f"obs-backup create SRC s3://... ({name[-3:]})", "obs-backup create SRC DIR", target=target)
            for _ in range(args.repeats):
                row.ours.append(
                    against_server([*obs, "create", str(source), location(), "--compression", "zst", "--quiet"])
                )
                local = fresh(out / "local")
                row.anchor.append(timed([*obs, "create", str(source), str(local), "--compression", "zst", "--quiet"]))
                row.ours_size = row.anchor_size = only_file(local, "*.tar.zst").stat().st_size
            return row

        if wanted("create to S3, zst"):
            rows.append(create_row("create to S3, zst", corpus, "<= 1.3 x local"))
        if wanted("restore from S3, zst"):
            remote = location()
            timed([*obs, "create", str(corpus), remote, "--compression", "zst", "--quiet"])
            local = fresh(out / "keep")
            timed([*obs, "create", str(corpus), str(local), "--compression", "zst", "--quiet"])
            row = Row(
                "restore from S3, zst",
                "obs-backup restore latest DIR --backup-dir s3://...",
                "obs-backup restore ARCHIVE DIR (local)",
                target="<= 1.3 x local",
            )
            for _ in range(args.repeats):
                target = out / "r-s3"
                row.ours.append(
                    against_server([*obs, "restore", "latest", str(target), "--backup-dir", remote, "--quiet"])
                )
                shutil.rmtree(target)
                target = out / "r-local"
                row.anchor.append(
                    timed([*obs, "restore", "latest", str(target), "--backup-dir", str(local), "--quiet"])
                )
                shutil.rmtree(target)
            rows.append(row)
        if big is not None and wanted("create to S3, one huge file, zst"):
            rows.append(create_row("create to S3, one huge file, zst", big, "peak RSS flat, like local"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server_context.__exit__(None, None, None)
        shutil.rmtree(out, ignore_errors=True)
    return rows


def print_table(result: dict[str, object]) -> None:
    rows = result["rows"]
    assert isinstance(rows, list)
    print()
    print(
        f"{'work':34} {'obs-backup':>11} {'anchor':>9} {'ratio':>7} {'size':>7} {'RSS MB':>8} {'anchor RSS':>10} "
        f"{'CPU s':>7} {'anchor CPU':>10} {'server CPU':>10}  target"
    )
    for row in rows:
        size = "" if row["size_ratio"] is None else f"{row['size_ratio']:.3f}"
        server = "" if row["server_cpu_s"] is None else f"{row['server_cpu_s']:.1f}"
        print(
            f"{row['work']:34} {row['ours_s']:>10.2f}s {row['anchor_s']:>8.2f}s {row['ratio']:>7.2f} {size:>7} "
            f"{row['ours_peak_rss_mb']:>8.0f} {row['anchor_peak_rss_mb']:>10.0f} {row['ours_cpu_s']:>7.1f} "
            f"{row['anchor_cpu_s']:>10.1f} {server:>10}  {row['target']}"
        )
    print(f"\nmachine: {result['machine']}, scale {result['scale']}, median of {result['repeats']} runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size factor (1.0 is ~600 MB)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per command (median reported)")
    parser.add_argument("--workdir", default="bench-output/work", help="where corpora and archives go")
    parser.add_argument("--json", default="bench-output/results.json", help="where to write the JSON results")
    parser.add_argument("--skip-big", action="store_true", help="skip the one-huge-file memory check")
    parser.add_argument("--skip-s3", action="store_true", help="skip the object-storage rows (SeaweedFS)")
    parser.add_argument("--keep", action="store_true", help="keep the corpora afterwards")
    parser.add_argument("--only", default=None, metavar="TEXT", help="time only the rows whose name contains TEXT")
    args = parser.parse_args()
    result = run(args)
    print_table(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
