# scripts/lib.sh - shared by scripts/test and scripts/demo: configure and
# build Loom in $LOOM_BUILD_DIR (default: build/) with ninja and ccache.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LOOM_BUILD_DIR:-$root/build}
# CI builds a fresh clone in another folder: make ccache ignore the folder.
export CCACHE_BASEDIR=$root
export CCACHE_NOHASHDIR=1
# Open MPI as root, and more ranks than cores, without the user's help.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

loom_build() {
  local jobs=${LOOM_JOBS:-$(nproc)}
  if [ ! -f "$build/build.ninja" ]; then
    cmake -G Ninja -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release \
      -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-19/build/utils/lit/lit.py \
      -DPython3_EXECUTABLE=/usr/bin/python3 >"$build.configure.log" 2>&1 || {
        cat "$build.configure.log"; echo "build: configure failed" >&2; return 1; }
  fi
  ninja -C "$build" -j "$jobs"
}
