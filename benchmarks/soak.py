"""Soak test: many cycles of mutate, back up, kill, prune and restore; then prove nothing was lost.

Each cycle changes a random tree, records what it looks like (outside the backup
directory), and runs ``obs-backup create`` in a subprocess, killing some runs with
SIGKILL at a random moment. Some cycles prune (sometimes killed too) or restore a
random backup (sometimes killed: the target must then be absent, as it was). At the
end every backup that ``list`` calls complete must verify and restore byte-identical
to the tree as it was when that backup was taken.

    python benchmarks/soak.py                  # a few hundred cycles, a few minutes
    python benchmarks/soak.py --cycles 8       # tiny, for CI
    python benchmarks/soak.py --s3             # the same, backing up to SeaweedFS on 127.0.0.1

Exit status 1 on any loss, mismatch or leftover; the summary line says what was checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

Snapshot = dict[str, tuple[str, str, int]]
COMPRESSIONS = ("gz", "zst", "none", "xz", "bz2")


def snapshot(root: Path) -> Snapshot:
    """Return {relative path: (type, sha256 or link target, permission bits)} for a tree."""
    result: Snapshot = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            relative = path.relative_to(root).as_posix()
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                result[relative] = ("symlink", os.readlink(path), 0)
            elif stat.S_ISDIR(info.st_mode):
                result[relative] = ("dir", "", mode)
            else:
                result[relative] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), mode)
    return result


def mutate(root: Path, rng: random.Random) -> None:
    """Apply a handful of random changes: new, changed, removed and renamed entries."""
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    dirs = [root] + [p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]
    for _ in range(rng.randint(1, 8)):
        action = rng.random()
        if action < 0.35 or not files:
            target = rng.choice(dirs) / f"f{rng.randrange(10**6)}.dat"
            size = rng.choice([0, rng.randint(1, 4096), rng.randint(4096, 256 * 1024)])
            target.write_bytes(rng.randbytes(size // 2) + b"text " * (size // 10))
            target.chmod(rng.choice([0o600, 0o640, 0o644, 0o755]))
        elif action < 0.6:
            victim = rng.choice(files)
            with open(victim, "ab") as handle:
                handle.write(rng.randbytes(rng.randint(1, 2048)))
        elif action < 0.75:
            rng.choice(files).unlink()
        elif action < 0.85:
            (rng.choice(dirs) / f"d{rng.randrange(10**6)}").mkdir(exist_ok=True)
        elif action < 0.93:
            source = rng.choice(files)
            link = source.parent / f"l{rng.randrange(10**6)}"
            if not link.exists():
                link.symlink_to(source.name)
        else:
            victim = rng.choice(files)
            victim.rename(victim.with_name(f"r{rng.randrange(10**6)}.dat"))
        files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        dirs = [root] + [p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]


def obs(*args: str) -> list[str]:
    return [sys.executable, "-m", "backup", *args]


def run_maybe_killed(
    argv: list[str], rng: random.Random, kill_probability: float, window: float = 0.35
) -> tuple[bool, int, str]:
    """Run a command; with the given probability SIGKILL it after a random delay of up
    to ``window`` seconds.

    Return (killed, exit code, stdout).
    """
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if rng.random() < kill_probability:
        time.sleep(rng.uniform(0.0, window))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            return True, -9, ""
    out, err = process.communicate()
    if process.returncode not in (0, 1):
        raise SystemExit(f"soak: unexpected exit {process.returncode} from {' '.join(argv)}: {err.decode()}")
    return False, process.returncode, out.decode()


def listed_archives(backup_dir: str) -> dict[str, str]:
    """Return {backup id: archive path or URL} of the complete backups ``list`` shows."""
    out = subprocess.run(obs("list", backup_dir, "--json"), capture_output=True, text=True, check=True).stdout
    return {row["backup_id"]: row["archive_path"] for row in json.loads(out)}


def listed(backup_dir: str) -> list[str]:
    return list(listed_archives(backup_dir))


def s3_leftovers(location: str) -> list[str]:
    """The claims and multipart uploads a clean run should have removed."""
    from backup.storage import S3Storage

    storage = S3Storage(location)
    client, bucket, prefix = storage.client, storage.s3.bucket, storage.s3.key("")
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    return [k for k in keys if k.endswith((".claim", ".writing"))] + [f"upload of {u['Key']}" for u in uploads]


def stored_names(backups: str, remote: str | None) -> list[str]:
    """The names of the objects in the backup location (not the hidden ones: claims,
    locks, the state file)."""
    if remote is None:
        return [p.name for p in Path(backups).iterdir() if not p.name.startswith(".")]
    from backup.storage import S3Storage

    return [info.name for info in S3Storage(remote).list_objects()]


def load_expected(directory: Path, backup_id: str) -> Snapshot:
    data = json.loads((directory / f"{backup_id}.json").read_text())
    return {path: (kind, value, mode) for path, (kind, value, mode) in data.items()}


def compare(expected: Snapshot, actual: Snapshot) -> list[str]:
    problems = [f"missing {p}" for p in expected if p not in actual]
    problems += [f"unexpected {p}" for p in actual if p not in expected]
    problems += [
        f"differs {p}: {expected[p]} != {actual[p]}" for p in expected if p in actual and expected[p] != actual[p]
    ]
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--workdir", default="bench-output/soak")
    parser.add_argument("--kill-probability", type=float, default=0.25)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop starting new cycles after this long")
    parser.add_argument(
        "--s3", action="store_true", help="back up to SeaweedFS (started on 127.0.0.1), not a directory"
    )
    parser.add_argument("--encrypt", action="store_true", help="encrypt every backup to an age recipient")
    args = parser.parse_args()
    if not args.s3:
        return soak(args, None)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.s3servers import start_seaweedfs

    workdir = Path(args.workdir).absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    with start_seaweedfs(workdir.parent / (workdir.name + "-seaweedfs")) as server:
        os.environ.update(server.env())
        # A short lease, so that killed runs' claims and locks go stale within the soak.
        return soak(args, f"s3://{server.make_bucket()}/soak?lease=2&grace=0")


def soak(args: argparse.Namespace, remote: str | None) -> int:
    """Run the soak, backing up into a directory of the work directory, or ``remote``."""
    rng = random.Random(args.seed)
    work = Path(args.workdir).absolute()
    shutil.rmtree(work, ignore_errors=True)
    source, expected_dir, scratch = work / "source", work / "expected", work / "scratch"
    for directory in (source, expected_dir, scratch):
        directory.mkdir(parents=True)
    backups = remote or str(work / "backups")
    window = 1.5 if remote else 0.35  # a client of an object store takes longer to start
    sealing: list[str] = []  # what create is given to encrypt
    opening: list[str] = []  # what restore and verify are given to decrypt
    if args.encrypt:
        from pyrage import x25519

        identity = x25519.Identity.generate()
        (work / "key.txt").write_text(f"{identity}\n")
        sealing, opening = ["--encrypt-to", str(identity.to_public())], ["--identity", str(work / "key.txt")]

    def exists() -> bool:
        return remote is not None or Path(backups).exists()

    counts = {"cycles": 0, "create_kills": 0, "prune_kills": 0, "restore_kills": 0, "backups": 0, "restores_checked": 0}
    failures: list[str] = []
    known: set[str] = set()
    started = time.monotonic()

    for cycle in range(args.cycles):
        if time.monotonic() - started > args.max_seconds:
            break
        counts["cycles"] += 1
        mutate(source, rng)
        state = snapshot(source)
        before = set(listed(backups)) if exists() else set()
        compression = rng.choice(COMPRESSIONS)
        killed, code, out = run_maybe_killed(
            obs("create", str(source), backups, "--compression", compression, "--json", *sealing),
            rng,
            args.kill_probability,
            window,
        )
        counts["create_kills"] += killed
        if not killed and code != 0:
            failures.append(f"cycle {cycle}: create failed: {out}")
        # Whatever landed this cycle (even from a killed run) must be this cycle's tree.
        for backup_id in set(listed(backups)) - before:
            (expected_dir / f"{backup_id}.json").write_text(json.dumps(state))
            known.add(backup_id)
            counts["backups"] += 1
        unknown = set(listed(backups)) - known
        if unknown:
            failures.append(f"cycle {cycle}: complete backups nobody made: {sorted(unknown)}")

        if rng.random() < 0.2:
            killed, code, _ = run_maybe_killed(
                obs("prune", backups, "--keep-last", str(rng.randint(2, 6))), rng, args.kill_probability, window
            )
            counts["prune_kills"] += killed
            if not killed and code != 0:
                failures.append(f"cycle {cycle}: prune failed")

        current = listed_archives(backups)
        if current and rng.random() < 0.3:
            chosen = rng.choice(sorted(current))
            archive = current[chosen]
            # One target name throughout: a restore cleans up what a killed one left.
            target = scratch / "target"
            killed, code, _ = run_maybe_killed(
                obs("restore", archive, str(target), *opening), rng, args.kill_probability, window
            )
            counts["restore_kills"] += killed
            if killed:
                if target.exists():
                    # Killed after the final move: it must then be complete.
                    problems = compare(load_expected(expected_dir, chosen), snapshot(target))
                    failures += [
                        f"cycle {cycle}: killed restore of {chosen} left a partial target: {p}" for p in problems
                    ]
            elif code != 0:
                failures.append(f"cycle {cycle}: restore of {chosen} failed")
            else:
                problems = compare(load_expected(expected_dir, chosen), snapshot(target))
                failures += [f"cycle {cycle}: restore of {chosen}: {p}" for p in problems]
                counts["restores_checked"] += 1
            shutil.rmtree(target, ignore_errors=True)

    # One clean run afterwards must succeed and leave no leftovers of the killed ones.
    if remote:
        time.sleep(3.5)  # past the 2 s lease: the killed runs' claims and lock are stale
    final = subprocess.run(obs("create", str(source), backups, "--json", *sealing), capture_output=True, text=True)
    if final.returncode != 0:
        failures.append(f"final create failed: {final.stderr.strip()}")
    else:
        backup_id = json.loads(final.stdout)["backup_id"]
        (expected_dir / f"{backup_id}.json").write_text(json.dumps(snapshot(source)))
        known.add(backup_id)
    if remote:
        leftovers = s3_leftovers(remote)
    else:
        leftovers = [p.name for p in Path(backups).iterdir() if p.name.endswith(".partial")]
    # Every object left belongs to a complete backup: the killed runs' parts are gone.
    complete = set(listed(backups))
    leftovers += [name for name in stored_names(backups, remote) if name.split(".", 1)[0] not in complete]
    if leftovers:
        failures.append(f"leftovers after a clean run: {leftovers}")
    verified = 0
    compared_bytes = 0
    for backup_id, archive in listed_archives(backups).items():
        check = subprocess.run(obs("verify", archive, "--json", *opening), capture_output=True, text=True)
        if check.returncode != 0:
            failures.append(f"{backup_id}: verify failed: {check.stdout.strip()[:300]}")
            continue
        target = scratch / "target"
        restored = subprocess.run(obs("restore", archive, str(target), *opening), capture_output=True, text=True)
        if restored.returncode != 0:
            failures.append(f"{backup_id}: restore failed: {restored.stderr.strip()}")
            continue
        problems = compare(load_expected(expected_dir, backup_id), snapshot(target))
        failures += [f"{backup_id}: {p}" for p in problems]
        compared_bytes += sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink())
        verified += 1
        shutil.rmtree(target)

    stray = sorted(p.name for p in scratch.iterdir())
    if stray:
        failures.append(f"left in the restore area after the last restore: {stray}")
    print(
        f"soak{' (S3)' if remote else ''}{' (encrypted)' if args.encrypt else ''}: {counts['cycles']} cycles, {counts['backups']} backups made, kills: "
        f"{counts['create_kills']} create / {counts['prune_kills']} prune / {counts['restore_kills']} restore, "
        f"{counts['restores_checked']} mid-run restores checked, {verified} complete backups verified and restored, "
        f"{compared_bytes} bytes compared, {len(failures)} failures, {time.monotonic() - started:.0f}s"
    )
    for failure in failures[:50]:
        print(f"FAIL {failure}")
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
