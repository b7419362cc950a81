#!/usr/bin/env bash
# Back up the bundled example data, list, verify and restore it, and show that the
# restored tree is identical and that plain GNU tar reads the archive too.
set -euo pipefail
cd "$(dirname "$0")/.."
OBS=".venv/bin/obs-backup"
OUT="demo-output"

rm -rf "$OUT"
mkdir -p "$OUT"
# Git keeps neither empty directories nor modes other than 644/755: recreate both.
cp -a examples/appdata "$OUT/appdata"
mkdir -p "$OUT/appdata/empty"
chmod 600 "$OUT/appdata/config/app.toml"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step obs-backup create "$OUT/appdata" "$OUT/backups" --exclude '*.tmp' --dry-run
$OBS create "$OUT/appdata" "$OUT/backups" --exclude '*.tmp' --dry-run

step obs-backup create "$OUT/appdata" "$OUT/backups" --exclude '*.tmp'
$OBS create "$OUT/appdata" "$OUT/backups" --exclude '*.tmp'

step obs-backup list "$OUT/backups"
$OBS list "$OUT/backups"

archive=$(ls "$OUT"/backups/*.tar.gz | head -n 1)
step obs-backup verify "$archive"
$OBS verify "$archive"

step obs-backup ls latest --backup-dir "$OUT/backups" "(from the manifest; the archive is not read)"
$OBS ls latest --backup-dir "$OUT/backups"

step obs-backup check "$OUT/backups" --read-data
$OBS check "$OUT/backups" --read-data

step obs-backup restore "$archive" "$OUT/restored"
$OBS restore "$archive" "$OUT/restored"

step diff -r "$OUT/appdata" "$OUT/restored" "(the excluded *.tmp file is the only difference)"
diff -r "$OUT/appdata" "$OUT/restored" || true

step tar -tvzf "$archive" "(any tar reads it; no obs-backup needed to restore)"
tar -tvzf "$archive"

step ls -l "$OUT/backups"
ls -l "$OUT/backups"
printf '\ndemo finished: the backup, its manifest and the restored copy are in %s/\n' "$OUT"
