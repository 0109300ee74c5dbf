#!/usr/bin/env bash
# Installs libckpt for C, C++, Fortran and MPI codes under a prefix:
#
#   ckpt-ffi/install.sh --prefix /opt/ckpt
#
#   PREFIX/lib/libckpt.so.0.1.0, libckpt.so.0, libckpt.so   the shared library (SONAME libckpt.so.0)
#   PREFIX/lib/libckpt.a                                      the static library (link also -lpthread -ldl -lm)
#   PREFIX/include/ckpt.h, ckpt_mpi.h, ckpt.hpp               C headers (ckpt_mpi.h: header-only MPI collectives),
#                                                             the header-only C++17 interface (ckpt.hpp)
#   PREFIX/include/ckpt.f90, ckpt_mpi.f90                     Fortran module sources (for any compiler / MPI)
#   PREFIX/lib/fortran/gfortran/ckpt.mod, ckpt_mpi.mod        compiled modules (when gfortran / mpif90 exist)
#   PREFIX/lib/libckpt_fortran.a                              their objects (ckpt_mpi.o only pulled in by MPI codes)
#   PREFIX/lib/pkgconfig/ckpt.pc, ckpt-fortran.pc             pkg-config
#   PREFIX/lib/cmake/ckpt/ckptConfig.cmake (+ Version)        find_package(ckpt): ckpt::ckpt, ckpt::ckpt_static,
#                                                             ckpt::fortran
#
# Options:
#   --prefix DIR      where to install (required; or PREFIX=DIR in the environment)
#   --libdir NAME     library directory under the prefix (default: lib)
#   --lib-from DIR    install libckpt.so/libckpt.a already built in DIR (e.g. target/debug) instead of building
#   --no-fortran      do not compile the Fortran modules
# Environment: CARGO (default cargo), FC (default gfortran), MPIFC (default mpif90), CARGO_TARGET_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${PREFIX:-}"
LIBDIR_NAME="lib"
LIB_FROM=""
FORTRAN=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
    --prefix=*) PREFIX="${1#*=}"; shift ;;
    --libdir) LIBDIR_NAME="${2:?--libdir needs a name}"; shift 2 ;;
    --libdir=*) LIBDIR_NAME="${1#*=}"; shift ;;
    --lib-from) LIB_FROM="${2:?--lib-from needs a directory}"; shift 2 ;;
    --lib-from=*) LIB_FROM="${1#*=}"; shift ;;
    --no-fortran) FORTRAN=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[ -n "$PREFIX" ] || { echo "install.sh: --prefix DIR is required" >&2; exit 2; }
case "$LIBDIR_NAME" in /*|*..*) echo "install.sh: --libdir must be relative to the prefix" >&2; exit 2 ;; esac
mkdir -p "$PREFIX"
PREFIX="$(cd "$PREFIX" && pwd)"
LIBDIR="$PREFIX/$LIBDIR_NAME"
INCDIR="$PREFIX/include"

VERSION="$(sed -n 's/^#define CKPT_VERSION_STRING "\(.*\)"$/\1/p' "$ROOT/include/ckpt.h")"
MAJOR="${VERSION%%.*}"
[ -n "$VERSION" ] || { echo "install.sh: no CKPT_VERSION_STRING in include/ckpt.h" >&2; exit 1; }
SONAME="libckpt.so.$MAJOR"

# ---- the library ----
if [ -z "$LIB_FROM" ]; then
  # cargo rustc passes the link argument to libckpt alone (RUSTFLAGS would rebuild every dependency)
  echo "install.sh: building libckpt (release, SONAME $SONAME)"
  (cd "$ROOT" && "${CARGO:-cargo}" rustc --release --locked -p ckpt-ffi --lib --quiet \
      -- -C "link-arg=-Wl,-soname,$SONAME")
  LIB_FROM="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi
for f in libckpt.so libckpt.a; do
  [ -f "$LIB_FROM/$f" ] || { echo "install.sh: $LIB_FROM/$f is missing" >&2; exit 1; }
done
install -d "$LIBDIR" "$INCDIR" "$LIBDIR/pkgconfig" "$LIBDIR/cmake/ckpt"
rm -f "$LIBDIR/libckpt.so" "$LIBDIR/$SONAME" "$LIBDIR/libckpt.so.$VERSION"
have_soname=0
if command -v readelf >/dev/null && readelf -d "$LIB_FROM/libckpt.so" | grep -q "(SONAME).*\[$SONAME\]"; then
  have_soname=1
fi
if [ "$have_soname" = 1 ]; then
  install -m 0755 "$LIB_FROM/libckpt.so" "$LIBDIR/libckpt.so.$VERSION"
  ln -s "libckpt.so.$VERSION" "$LIBDIR/$SONAME"
  ln -s "$SONAME" "$LIBDIR/libckpt.so"
  SHARED_FILE="libckpt.so.$VERSION"
else
  # a library built without the SONAME (e.g. --lib-from target/debug): install it under its plain name
  install -m 0755 "$LIB_FROM/libckpt.so" "$LIBDIR/libckpt.so"
  SHARED_FILE="libckpt.so"
fi
install -m 0644 "$LIB_FROM/libckpt.a" "$LIBDIR/libckpt.a"

# ---- headers and Fortran sources ----
for f in ckpt.h ckpt_mpi.h ckpt.hpp ckpt.f90 ckpt_mpi.f90; do
  install -m 0644 "$ROOT/include/$f" "$INCDIR/$f"
done

# ---- compiled Fortran modules (gfortran; a .mod file is specific to its compiler) ----
FMODDIR="$LIBDIR/fortran/gfortran"
HAVE_FORTRAN=0
HAVE_FORTRAN_MPI=0
if [ "$FORTRAN" = 1 ] && command -v "${FC:-gfortran}" >/dev/null; then
  FC="${FC:-gfortran}"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  rm -rf "$FMODDIR" && install -d "$FMODDIR"
  "$FC" -O2 -fPIC -std=f2018 -J"$work" -c "$INCDIR/ckpt.f90" -o "$work/ckpt.o"
  objs=("$work/ckpt.o")
  HAVE_FORTRAN=1
  if command -v "${MPIFC:-mpif90}" >/dev/null; then
    if "${MPIFC:-mpif90}" -O2 -fPIC -std=f2018 -I"$work" -J"$work" -c "$INCDIR/ckpt_mpi.f90" -o "$work/ckpt_mpi.o" \
        2>"$work/mpi.err"; then
      objs+=("$work/ckpt_mpi.o")
      HAVE_FORTRAN_MPI=1
    else
      echo "install.sh: note: ${MPIFC:-mpif90} could not compile ckpt_mpi.f90 (skipped):" >&2
      cat "$work/mpi.err" >&2
    fi
  fi
  install -m 0644 "$work"/*.mod "$FMODDIR/"
  rm -f "$LIBDIR/libckpt_fortran.a"
  ar rcs "$LIBDIR/libckpt_fortran.a" "${objs[@]}"
elif [ "$FORTRAN" = 1 ]; then
  echo "install.sh: note: ${FC:-gfortran} not found: Fortran users compile PREFIX/include/ckpt.f90 themselves" >&2
fi

# ---- pkg-config ----
cat > "$LIBDIR/pkgconfig/ckpt.pc" <<EOF
prefix=$PREFIX
exec_prefix=\${prefix}
libdir=\${exec_prefix}/$LIBDIR_NAME
includedir=\${prefix}/include

Name: ckpt
Description: libckpt, checkpoint/restart for HPC jobs (C ABI; ckpt_mpi.h adds header-only MPI collectives)
URL: https://github.com/ckpt-hpc/ckpt
Version: $VERSION
Cflags: -I\${includedir}
Libs: -L\${libdir} -lckpt
Libs.private: -lpthread -ldl -lm
EOF
if [ "$HAVE_FORTRAN" = 1 ]; then
  cat > "$LIBDIR/pkgconfig/ckpt-fortran.pc" <<EOF
prefix=$PREFIX
exec_prefix=\${prefix}
libdir=\${exec_prefix}/$LIBDIR_NAME
fmoddir=\${libdir}/fortran/gfortran

Name: ckpt-fortran
Description: Fortran modules ckpt and ckpt_mpi of libckpt (compiled with gfortran)
Version: $VERSION
Requires: ckpt = $VERSION
Cflags: -I\${fmoddir}
Libs: -L\${libdir} -lckpt_fortran
EOF
fi

# ---- CMake package (relocatable: paths relative to this file) ----
up="../.."
IFS=/ read -r -a parts <<<"$LIBDIR_NAME"
for _ in "${parts[@]}"; do up="$up/.."; done
minor_rule=""
if [ "$MAJOR" = 0 ]; then
  minor_rule="elseif(NOT PACKAGE_FIND_VERSION_MINOR EQUAL \"$(echo "$VERSION" | cut -d. -f2)\")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
"
fi
if [ "$have_soname" = 1 ]; then
  soname_prop="IMPORTED_SONAME \"$SONAME\""
else
  soname_prop="IMPORTED_NO_SONAME TRUE"
fi
cat > "$LIBDIR/cmake/ckpt/ckptConfig.cmake" <<EOF
# find_package(ckpt) for libckpt $VERSION (generated by ckpt-ffi/install.sh).
#   ckpt::ckpt         the shared library, with include/ (ckpt.h, and ckpt_mpi.h for MPI codes)
#   ckpt::ckpt_static  the static library (brings -lpthread -ldl -lm)
#   ckpt::fortran      modules ckpt and ckpt_mpi compiled with gfortran (if ckpt_FORTRAN_FOUND)
# For ckpt_mpi.h also link MPI::MPI_C (find_package(MPI)); libckpt itself does not link MPI.
get_filename_component(_ckpt_prefix "\${CMAKE_CURRENT_LIST_DIR}/$up" ABSOLUTE)
set(ckpt_VERSION "$VERSION")
set(ckpt_INCLUDE_DIRS "\${_ckpt_prefix}/include")
set(ckpt_FORTRAN_FOUND $( [ "$HAVE_FORTRAN" = 1 ] && echo TRUE || echo FALSE ))
if(NOT TARGET ckpt::ckpt)
  add_library(ckpt::ckpt SHARED IMPORTED)
  set_target_properties(ckpt::ckpt PROPERTIES
    IMPORTED_LOCATION "\${_ckpt_prefix}/$LIBDIR_NAME/$SHARED_FILE"
    $soname_prop
    INTERFACE_INCLUDE_DIRECTORIES "\${_ckpt_prefix}/include")
endif()
if(NOT TARGET ckpt::ckpt_static)
  add_library(ckpt::ckpt_static STATIC IMPORTED)
  set_target_properties(ckpt::ckpt_static PROPERTIES
    IMPORTED_LOCATION "\${_ckpt_prefix}/$LIBDIR_NAME/libckpt.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "C"
    INTERFACE_INCLUDE_DIRECTORIES "\${_ckpt_prefix}/include"
    INTERFACE_LINK_LIBRARIES "pthread;dl;m")
endif()
if(ckpt_FORTRAN_FOUND AND NOT TARGET ckpt::fortran)
  add_library(ckpt::fortran STATIC IMPORTED)
  set_target_properties(ckpt::fortran PROPERTIES
    IMPORTED_LOCATION "\${_ckpt_prefix}/$LIBDIR_NAME/libckpt_fortran.a"
    IMPORTED_LINK_INTERFACE_LANGUAGES "Fortran"
    INTERFACE_INCLUDE_DIRECTORIES "\${_ckpt_prefix}/$LIBDIR_NAME/fortran/gfortran"
    INTERFACE_LINK_LIBRARIES "ckpt::ckpt")
endif()
set(ckpt_LIBRARIES ckpt::ckpt)
unset(_ckpt_prefix)
EOF
cat > "$LIBDIR/cmake/ckpt/ckptConfigVersion.cmake" <<EOF
# Version check for find_package(ckpt VERSION): compatible when the major version matches (and, below
# 1.0, the minor version too) and the found version is not older than the one asked for.
set(PACKAGE_VERSION "$VERSION")
if(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
elseif(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(NOT PACKAGE_FIND_VERSION_MAJOR EQUAL "$MAJOR")
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
${minor_rule}else()
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
# libckpt is built for 64-bit targets
if(NOT CMAKE_SIZEOF_VOID_P STREQUAL "" AND NOT CMAKE_SIZEOF_VOID_P STREQUAL "8")
  set(PACKAGE_VERSION "\${PACKAGE_VERSION} (64bit)")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
EOF

echo "installed libckpt $VERSION into $PREFIX"
echo "  C:       cc -I$INCDIR app.c -L$LIBDIR -lckpt -Wl,-rpath,$LIBDIR"
echo "  pkg-config: PKG_CONFIG_PATH=$LIBDIR/pkgconfig pkg-config --cflags --libs ckpt"
echo "  CMake:   -DCMAKE_PREFIX_PATH=$PREFIX, find_package(ckpt 0.1 REQUIRED), target_link_libraries(app ckpt::ckpt)"
if [ "$HAVE_FORTRAN" = 1 ]; then
  echo "  Fortran: gfortran -I$FMODDIR app.f90 -L$LIBDIR -lckpt_fortran -lckpt -Wl,-rpath,$LIBDIR"
  [ "$HAVE_FORTRAN_MPI" = 1 ] && echo "           (module ckpt_mpi built with $(command -v "${MPIFC:-mpif90}"))"
fi
exit 0
