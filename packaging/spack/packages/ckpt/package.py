# Spack recipe for ckpt: builds and installs libckpt, its headers, Fortran modules, pkg-config and CMake
# files, and the `ckpt` command with ckpt-ffi/install.sh, the same script as a manual install.
#
#   spack repo add packaging/spack      # this repository's recipe (or copy this file into your own repo)
#   spack install ckpt                  # +fortran by default
#   spack install ckpt +mpi ^openmpi    # the MPI helpers (ckpt_mpi.h, module ckpt_mpi) with that MPI
#
# packaging/spack/check.py checks this file against Spack's package API (CI: .ci/run).
#
# SPDX-License-Identifier: (Apache-2.0 OR MIT)

from spack.package import *


class Ckpt(Package):
    """Checkpoint/restart for HPC and ML jobs on Slurm: durable, atomic, verified checkpoint files taken
    on a signal, an interval or before the job's time limit, and found again on restart. Installs
    libckpt (C ABI: ckpt.h; header-only C++17: ckpt.hpp; Fortran modules ckpt and ckpt_mpi; header-only
    MPI collectives: ckpt_mpi.h), pkg-config (ckpt, ckpt-fortran) and CMake (find_package(ckpt)) files,
    and the ckpt command (ckpt job, create, requeue, verify, ...) with its completions and man pages."""

    homepage = "https://github.com/ckpt-hpc/ckpt"
    git = "https://github.com/ckpt-hpc/ckpt.git"

    license("Apache-2.0 OR MIT")

    version("main", branch="main")

    variant(
        "fortran",
        default=True,
        description="Compile the Fortran module ckpt (and ckpt_mpi with +mpi) into lib/fortran/gfortran "
        "and lib/libckpt_fortran.a; the module sources are installed in include/ either way",
    )
    variant(
        "mpi",
        default=False,
        description="Install the MPI helpers: the header-only collectives ckpt_mpi.h and the Fortran "
        "module ckpt_mpi (libckpt itself never links MPI)",
    )

    depends_on("c", type="build")
    depends_on("fortran", type="build", when="+fortran")
    # rust-version of the workspace; cargo builds the library and the command (--locked).
    depends_on("rust@1.88:", type="build")
    depends_on("mpi", when="+mpi")

    sanity_check_is_file = [
        "include/ckpt.h",
        "include/ckpt.hpp",
        "lib/libckpt.so",
        "lib/libckpt.a",
        "lib/pkgconfig/ckpt.pc",
        "lib/cmake/ckpt/ckptConfig.cmake",
        "bin/ckpt",
    ]

    def setup_build_environment(self, env):
        # cargo's downloads and build stay in the stage.
        env.set("CARGO_HOME", join_path(self.stage.path, "cargo-home"))
        env.set("CARGO_TARGET_DIR", join_path(self.stage.path, "cargo-target"))
        env.set("CARGO", join_path(self.spec["rust"].prefix.bin, "cargo"))
        if self.spec.satisfies("+fortran+mpi"):
            # install.sh compiles module ckpt_mpi with this MPI's Fortran wrapper (FC is Spack's).
            env.set("MPIFC", self.spec["mpi"].mpifc)

    def install_args(self):
        """The arguments of ckpt-ffi/install.sh for this spec."""
        args = ["--prefix", self.prefix]
        if self.spec.satisfies("~fortran"):
            args.append("--no-fortran")
        if self.spec.satisfies("~mpi"):
            args.append("--no-mpi")
        return args

    def install(self, spec, prefix):
        bash = which("bash", required=True)
        bash(join_path(self.stage.source_path, "ckpt-ffi", "install.sh"), *self.install_args())
