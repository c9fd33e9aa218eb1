#!/bin/sh
# The image's entry point: before `dvc` or `hrm` runs, check that the working directory (/work, the mount)
# is the root of a checkout, so a wrong or missing `-v` gets one clear line instead of a tool's traceback.
# Any other command (bash, python, ...) runs as given.
set -eu
if [ "$#" -eq 0 ]; then
    set -- hrm doctor
fi
# `docker run --user UID:GID` with a uid the image has no account for: DVC asks for the user name
# (getpass), which then fails with "getpwuid(): uid not found". The name comes from USER/LOGNAME first.
if ! getent passwd "$(id -u)" > /dev/null 2>&1; then
    export USER="${USER:-hrm}" LOGNAME="${LOGNAME:-hrm}"
fi
case "$1" in
    dvc | hrm)
        here=$(pwd)
        if [ ! -f params.yaml ]; then
            echo "hrm container: error: $here/params.yaml not found: mount the root of your checkout at $here" \
                '(from the repository root: docker run --rm -v "$PWD":/work IMAGE ...)' >&2
            exit 2
        fi
        if [ "$1" = dvc ] && ! git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
            echo "hrm container: error: $here is not a git repository: DVC needs the checkout's git history;" \
                "mount a clone of the repository (git clone ...), not a copy of its files" >&2
            exit 2
        fi
        ;;
esac
exec "$@"
