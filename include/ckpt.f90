!> ckpt.f90: the Fortran module of libckpt (checkpoint/restart for HPC jobs).
!>
!> Standard Fortran 2018 with ISO_C_BINDING: every C function of ckpt.h has a bind(C) interface of the same
!> name (no compiler-specific name mangling), plus Fortran-friendly wrappers ending in _f that take Fortran
!> strings and arrays. Written by hand against include/ckpt.h; ckpt-ffi/tests/fortran.rs checks that every
!> header function has an interface with matching argument types and that the constants agree.
!>
!> Build (gfortran; any Fortran 2018 compiler with TS 29113 support works the same way):
!>     gfortran -c $PREFIX/include/ckpt.f90          # gives ckpt.mod and ckpt.o
!>     gfortran app.f90 ckpt.o -L$PREFIX/lib -lckpt -Wl,-rpath,$PREFIX/lib
!> or, after `ckpt-ffi/install.sh`, use the prebuilt gfortran module: -I$PREFIX/lib/fortran/gfortran and
!> -lckpt_fortran -lckpt (pkg-config ckpt-fortran).
!>
!> Conventions (as in ckpt.h):
!>  - Fallible functions return integer(c_int32_t): CKPT_OK (0) or a negative CKPT_ERR_* code;
!>    ckpt_last_error_f() gives this thread's message for the last failure.
!>  - Out-arguments are intent(inout) because they are written only on success (a failed call leaves them
!>    as they were).
!>  - C int32_t is integer(c_int32_t), int64_t is integer(c_int64_t), size_t is integer(c_size_t), and
!>    uint64_t (generation numbers) is integer(c_int64_t): generations stay far below 2**63.
!>  - const char * arguments are character(kind=c_char) arrays holding a NUL-terminated string: call the raw
!>    interfaces as ckpt_init("heat"//c_null_char), or use the _f wrappers, which trim trailing blanks and
!>    add the NUL. Nullable C strings and pointers are OPTIONAL arguments (absent = NULL, Fortran 2018).
!>  - Memory regions: the raw ckpt_protect takes c_loc(x) and the size in bytes (c_sizeof(x) for an
!>    explicit-shape array or a scalar, size(x, kind=c_size_t) * c_sizeof(x(1)) for an allocatable or
!>    assumed-shape one); ckpt_protect_f(id, x) does that for any contiguous
!>    variable or array of any rank and intrinsic or derived type (CHARACTER of kind c_char up to rank 7). The
!>    variable must have the TARGET attribute (or be a POINTER) and stay allocated while protected;
!>    protect it again after reallocating it. By name, ckpt_protect_named_f("e", x) does the same and the
!>    name is stored and checked at restart (a field added between two others is never restored from
!>    another array of the same size; errors say region "e").
!>  - Thread safety: as in C (every function may be called from any thread).
module ckpt
  use, intrinsic :: iso_c_binding, only: c_int32_t, c_int64_t, c_size_t, c_char, c_ptr, c_null_ptr, &
                                         c_null_char, c_loc, c_f_pointer, c_associated
  implicit none
  private

  ! ---- version (the CKPT_VERSION_* macros of ckpt.h) ----
  integer(c_int32_t), parameter, public :: CKPT_VERSION_MAJOR = 0
  integer(c_int32_t), parameter, public :: CKPT_VERSION_MINOR = 1
  integer(c_int32_t), parameter, public :: CKPT_VERSION_PATCH = 0
  integer(c_int32_t), parameter, public :: CKPT_VERSION_NUMBER = &
    CKPT_VERSION_MAJOR * 10000 + CKPT_VERSION_MINOR * 100 + CKPT_VERSION_PATCH
  character(len=*), parameter, public :: CKPT_VERSION_STRING = "0.1.0"

  ! ---- status codes (stable, never reused; the values of ckpt.h) ----
  integer(c_int32_t), parameter, public :: CKPT_OK = 0
  integer(c_int32_t), parameter, public :: CKPT_ERR_IO = -1
  integer(c_int32_t), parameter, public :: CKPT_ERR_NOT_FOUND = -2
  integer(c_int32_t), parameter, public :: CKPT_ERR_CORRUPT = -3
  integer(c_int32_t), parameter, public :: CKPT_ERR_UNSUPPORTED_VERSION = -4
  integer(c_int32_t), parameter, public :: CKPT_ERR_TOO_LARGE = -5
  integer(c_int32_t), parameter, public :: CKPT_ERR_INVALID_ARGUMENT = -6
  integer(c_int32_t), parameter, public :: CKPT_ERR_NO_VALID_CHECKPOINT = -7
  integer(c_int32_t), parameter, public :: CKPT_ERR_CONFLICT = -8
  integer(c_int32_t), parameter, public :: CKPT_ERR_SECTION_NOT_FOUND = -9
  integer(c_int32_t), parameter, public :: CKPT_ERR_ENCODING = -10
  integer(c_int32_t), parameter, public :: CKPT_ERR_INVALID_STATE = -11
  integer(c_int32_t), parameter, public :: CKPT_ERR_UNTRUSTED = -12
  integer(c_int32_t), parameter, public :: CKPT_ERR_NULL_ARGUMENT = -20
  integer(c_int32_t), parameter, public :: CKPT_ERR_NOT_INITIALIZED = -21
  integer(c_int32_t), parameter, public :: CKPT_ERR_ALREADY_INITIALIZED = -22
  integer(c_int32_t), parameter, public :: CKPT_ERR_UNKNOWN_REGION = -23
  integer(c_int32_t), parameter, public :: CKPT_ERR_SIZE_MISMATCH = -24
  integer(c_int32_t), parameter, public :: CKPT_ERR_NO_CHECKPOINT = -25
  integer(c_int32_t), parameter, public :: CKPT_ERR_BUFFER_TOO_SMALL = -26
  integer(c_int32_t), parameter, public :: CKPT_ERR_INVALID_UTF8 = -27
  integer(c_int32_t), parameter, public :: CKPT_ERR_MPI = -30
  integer(c_int32_t), parameter, public :: CKPT_ERR_OTHER = -98
  integer(c_int32_t), parameter, public :: CKPT_ERR_PANIC = -99
  ! the `copy` argument of ckpt_part_copy_read/_write/_commit
  integer(c_int32_t), parameter, public :: CKPT_PART_OWN = 0
  integer(c_int32_t), parameter, public :: CKPT_PART_PARTNER = 1

  ! ---- the C functions of ckpt.h, in header order (see the header for each contract) ----
  public :: ckpt_init, ckpt_finalize, ckpt_protect, ckpt_unprotect, ckpt_protect_named, ckpt_unprotect_named, &
            ckpt_should_checkpoint, ckpt_should_exit, ckpt_checkpoint, ckpt_have_restart, ckpt_restart_size, &
            ckpt_restart_size_named, ckpt_restart, ckpt_last_error, ckpt_status_str, &
            ckpt_version, ckpt_set_config, ckpt_set_rank, ckpt_rank_info, ckpt_set_metadata, ckpt_restart_metadata, &
            ckpt_save_buffer, ckpt_buffer_size, ckpt_load_buffer, ckpt_next_generation, ckpt_checkpoint_part, &
            ckpt_commit_step, ckpt_newest_valid_generation, ckpt_select_generation, ckpt_finish_step, &
            ckpt_request_checkpoint, ckpt_get_part_identity, ckpt_commit_step_parts, ckpt_restart_info, &
            ckpt_restart_details_free, ckpt_restart_details_restored, ckpt_restart_details_rejected_count, &
            ckpt_restart_details_rejected, ckpt_checkpoint_async, ckpt_checkpoint_part_async, ckpt_checkpoint_wait, &
            ckpt_restart_step, ckpt_restart_part_size, ckpt_restart_part_size_named, ckpt_restart_part, &
            ckpt_restart_part_named, ckpt_has_cache_level, ckpt_record_step_parts, ckpt_has_partner_copies, &
            ckpt_node_key, ckpt_part_copy_read, ckpt_part_copy_write, ckpt_part_copy_commit, &
            ckpt_partner_copies_held, ckpt_step_identities

  !> struct ckpt_part_identity of ckpt.h: what a rank's durable part of a multi-rank step is, gathered to
  !> rank 0 for ckpt_commit_step_parts (40 bytes; the unsigned C fields are signed integers of the same
  !> size here: the values are carried, never computed with).
  type, bind(C), public :: ckpt_part_identity
    integer(c_int64_t) :: generation = 0
    integer(c_int64_t) :: step = 0
    integer(c_int64_t) :: file_len = 0
    integer(c_int32_t) :: rank = 0
    integer(c_int32_t) :: nranks = 0
    integer(c_int32_t) :: header_crc32 = 0
    integer(c_int32_t) :: table_crc32 = 0
  end type ckpt_part_identity

  ! ---- Fortran-friendly wrappers ----
  public :: ckpt_init_f, ckpt_set_config_f, ckpt_set_metadata_f, ckpt_restart_metadata_f, ckpt_protect_f, &
            ckpt_protect_named_f, ckpt_unprotect_named_f, ckpt_restart_size_named_f, &
            ckpt_save_buffer_f, ckpt_buffer_size_f, ckpt_load_buffer_f, ckpt_last_error_f, ckpt_status_str_f, &
            ckpt_version_f, ckpt_c_string, ckpt_f_string, ckpt_restart_info_f, ckpt_restart_rejected_f

  interface
    !> int32_t ckpt_init(const char *name): name absent = NULL (the default name).
    function ckpt_init(name) bind(C, name="ckpt_init") result(status)
      import :: c_int32_t, c_char
      character(kind=c_char), dimension(*), intent(in), optional :: name
      integer(c_int32_t) :: status
    end function ckpt_init

    !> int32_t ckpt_finalize(void)
    function ckpt_finalize() bind(C, name="ckpt_finalize") result(status)
      import :: c_int32_t
      integer(c_int32_t) :: status
    end function ckpt_finalize

    !> int32_t ckpt_protect(int32_t id, void *ptr, size_t len): ptr = c_loc(x) (x TARGET), len in bytes.
    function ckpt_protect(id, ptr, len) bind(C, name="ckpt_protect") result(status)
      import :: c_int32_t, c_ptr, c_size_t
      integer(c_int32_t), value :: id
      type(c_ptr), value :: ptr
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_protect

    !> int32_t ckpt_unprotect(int32_t id)
    function ckpt_unprotect(id) bind(C, name="ckpt_unprotect") result(status)
      import :: c_int32_t
      integer(c_int32_t), value :: id
      integer(c_int32_t) :: status
    end function ckpt_unprotect

    !> int32_t ckpt_protect_named(const char *name, void *ptr, size_t len): the region called name (stored
    !> in the checkpoint, read back by name at restart); ckpt_protect_named_f is simpler.
    function ckpt_protect_named(name, ptr, len) bind(C, name="ckpt_protect_named") result(status)
      import :: c_int32_t, c_char, c_ptr, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: name
      type(c_ptr), value :: ptr
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_protect_named

    !> int32_t ckpt_unprotect_named(const char *name)
    function ckpt_unprotect_named(name) bind(C, name="ckpt_unprotect_named") result(status)
      import :: c_int32_t, c_char
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_int32_t) :: status
    end function ckpt_unprotect_named

    !> int32_t ckpt_should_checkpoint(void): 1 or 0; lock-free, call it every iteration.
    function ckpt_should_checkpoint() bind(C, name="ckpt_should_checkpoint") result(flag)
      import :: c_int32_t
      integer(c_int32_t) :: flag
    end function ckpt_should_checkpoint

    !> int32_t ckpt_should_exit(void): 1 or 0.
    function ckpt_should_exit() bind(C, name="ckpt_should_exit") result(flag)
      import :: c_int32_t
      integer(c_int32_t) :: flag
    end function ckpt_should_exit

    !> int32_t ckpt_checkpoint(int64_t step)
    function ckpt_checkpoint(step) bind(C, name="ckpt_checkpoint") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: step
      integer(c_int32_t) :: status
    end function ckpt_checkpoint

    !> int32_t ckpt_checkpoint_async(int64_t step): the regions are copied before it returns.
    function ckpt_checkpoint_async(step) bind(C, name="ckpt_checkpoint_async") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: step
      integer(c_int32_t) :: status
    end function ckpt_checkpoint_async

    !> int32_t ckpt_checkpoint_part_async(uint64_t generation, int64_t step)
    function ckpt_checkpoint_part_async(generation, step) bind(C, name="ckpt_checkpoint_part_async") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: generation
      integer(c_int64_t), value :: step
      integer(c_int32_t) :: status
    end function ckpt_checkpoint_part_async

    !> int32_t ckpt_checkpoint_wait(void): waits until the asynchronous checkpoint is durable.
    function ckpt_checkpoint_wait() bind(C, name="ckpt_checkpoint_wait") result(status)
      import :: c_int32_t
      integer(c_int32_t) :: status
    end function ckpt_checkpoint_wait

    !> int32_t ckpt_restart_step(uint32_t *nranks_out, int64_t *step_out): restart on another number of
    !> ranks; step_out optional (NULL).
    function ckpt_restart_step(nranks_out, step_out) bind(C, name="ckpt_restart_step") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int32_t), intent(inout) :: nranks_out
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_restart_step

    !> int32_t ckpt_restart_part_size(uint32_t rank, int32_t id, size_t *len_out)
    function ckpt_restart_part_size(rank, id, len_out) bind(C, name="ckpt_restart_part_size") result(status)
      import :: c_int32_t, c_size_t
      integer(c_int32_t), value :: rank, id
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_restart_part_size

    !> int32_t ckpt_restart_part_size_named(uint32_t rank, const char *name, size_t *len_out)
    function ckpt_restart_part_size_named(rank, name, len_out) bind(C, name="ckpt_restart_part_size_named") &
        result(status)
      import :: c_int32_t, c_char, c_size_t
      integer(c_int32_t), value :: rank
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_restart_part_size_named

    !> int32_t ckpt_restart_part(uint32_t rank, int32_t id, void *buf, size_t len): old rank `rank`'s
    !> region `id` into buf (c_loc of a contiguous array of exactly len bytes).
    function ckpt_restart_part(rank, id, buf, len) bind(C, name="ckpt_restart_part") result(status)
      import :: c_int32_t, c_size_t, c_ptr
      integer(c_int32_t), value :: rank, id
      type(c_ptr), value :: buf
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_restart_part

    !> int32_t ckpt_restart_part_named(uint32_t rank, const char *name, void *buf, size_t len)
    function ckpt_restart_part_named(rank, name, buf, len) bind(C, name="ckpt_restart_part_named") result(status)
      import :: c_int32_t, c_char, c_size_t, c_ptr
      integer(c_int32_t), value :: rank
      character(kind=c_char), dimension(*), intent(in) :: name
      type(c_ptr), value :: buf
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_restart_part_named

    !> int32_t ckpt_has_cache_level(void): 1 with a node-local cache level (CKPT_CACHE_DIR), else 0.
    function ckpt_has_cache_level() bind(C, name="ckpt_has_cache_level") result(flag)
      import :: c_int32_t
      integer(c_int32_t) :: flag
    end function ckpt_has_cache_level

    !> int32_t ckpt_record_step_parts(uint64_t generation, int64_t step,
    !>                                const struct ckpt_part_identity *parts, size_t nparts)
    function ckpt_record_step_parts(generation, step, parts, nparts) bind(C, name="ckpt_record_step_parts") &
        result(status)
      import :: c_int32_t, c_int64_t, c_size_t, ckpt_part_identity
      integer(c_int64_t), value :: generation, step
      type(ckpt_part_identity), dimension(*), intent(in) :: parts
      integer(c_size_t), value :: nparts
      integer(c_int32_t) :: status
    end function ckpt_record_step_parts

    !> int32_t ckpt_has_partner_copies(void): 1 with CKPT_PARTNER=1 and a cache level, else 0.
    function ckpt_has_partner_copies() bind(C, name="ckpt_has_partner_copies") result(flag)
      import :: c_int32_t
      integer(c_int32_t) :: flag
    end function ckpt_has_partner_copies

    !> int32_t ckpt_node_key(uint64_t *key_out): a 64-bit key of this process's node.
    function ckpt_node_key(key_out) bind(C, name="ckpt_node_key") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), intent(inout) :: key_out
      integer(c_int32_t) :: status
    end function ckpt_node_key

    !> int32_t ckpt_part_copy_read(int32_t copy, uint64_t generation, uint32_t rank, uint64_t offset,
    !>                             void *buf, size_t len): bytes of a part in this node's cache.
    function ckpt_part_copy_read(copy, generation, rank, offset, buf, len) bind(C, name="ckpt_part_copy_read") &
        result(status)
      import :: c_int32_t, c_int64_t, c_size_t, c_ptr
      integer(c_int32_t), value :: copy
      integer(c_int64_t), value :: generation
      integer(c_int32_t), value :: rank
      integer(c_int64_t), value :: offset
      type(c_ptr), value :: buf
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_part_copy_read

    !> int32_t ckpt_part_copy_write(int32_t copy, uint64_t generation, uint32_t rank, uint64_t offset,
    !>                              const void *buf, size_t len): bytes of a part received from another node.
    function ckpt_part_copy_write(copy, generation, rank, offset, buf, len) bind(C, name="ckpt_part_copy_write") &
        result(status)
      import :: c_int32_t, c_int64_t, c_size_t, c_ptr
      integer(c_int32_t), value :: copy
      integer(c_int64_t), value :: generation
      integer(c_int32_t), value :: rank
      integer(c_int64_t), value :: offset
      type(c_ptr), value :: buf
      integer(c_size_t), value :: len
      integer(c_int32_t) :: status
    end function ckpt_part_copy_write

    !> int32_t ckpt_part_copy_commit(int32_t copy, const struct ckpt_part_identity *expected): keeps the
    !> received part once it is exactly `expected` and verifies.
    function ckpt_part_copy_commit(copy, expected) bind(C, name="ckpt_part_copy_commit") result(status)
      import :: c_int32_t, ckpt_part_identity
      integer(c_int32_t), value :: copy
      type(ckpt_part_identity), intent(in) :: expected
      integer(c_int32_t) :: status
    end function ckpt_part_copy_commit

    !> int32_t ckpt_partner_copies_held(uint64_t generation, uint32_t *ranks_out, size_t capacity,
    !>                                  size_t *count_out): the ranks whose parts this node keeps copies of.
    function ckpt_partner_copies_held(generation, ranks_out, capacity, count_out) &
        bind(C, name="ckpt_partner_copies_held") result(status)
      import :: c_int32_t, c_int64_t, c_size_t
      integer(c_int64_t), value :: generation
      integer(c_int32_t), dimension(*), intent(inout) :: ranks_out
      integer(c_size_t), value :: capacity
      integer(c_size_t), intent(inout) :: count_out
      integer(c_int32_t) :: status
    end function ckpt_partner_copies_held

    !> int32_t ckpt_step_identities(uint64_t generation, struct ckpt_part_identity *parts_out, size_t nparts,
    !>                              int64_t *step_out): every part's identity from the step's manifest.
    function ckpt_step_identities(generation, parts_out, nparts, step_out) bind(C, name="ckpt_step_identities") &
        result(status)
      import :: c_int32_t, c_int64_t, c_size_t, ckpt_part_identity
      integer(c_int64_t), value :: generation
      type(ckpt_part_identity), dimension(*), intent(inout) :: parts_out
      integer(c_size_t), value :: nparts
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_step_identities

    !> int32_t ckpt_have_restart(int32_t *found_out, int64_t *step_out): step_out optional (NULL).
    function ckpt_have_restart(found_out, step_out) bind(C, name="ckpt_have_restart") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int32_t), intent(inout) :: found_out
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_have_restart

    !> int32_t ckpt_restart_size(int32_t id, size_t *len_out)
    function ckpt_restart_size(id, len_out) bind(C, name="ckpt_restart_size") result(status)
      import :: c_int32_t, c_size_t
      integer(c_int32_t), value :: id
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_restart_size

    !> int32_t ckpt_restart_size_named(const char *name, size_t *len_out)
    function ckpt_restart_size_named(name, len_out) bind(C, name="ckpt_restart_size_named") result(status)
      import :: c_int32_t, c_char, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: name
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_restart_size_named

    !> int32_t ckpt_restart(int64_t *step_out): step_out optional (NULL).
    function ckpt_restart(step_out) bind(C, name="ckpt_restart") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_restart

    !> const char *ckpt_last_error(void): see ckpt_last_error_f.
    function ckpt_last_error() bind(C, name="ckpt_last_error") result(str)
      import :: c_ptr
      type(c_ptr) :: str
    end function ckpt_last_error

    !> const char *ckpt_status_str(int32_t status): see ckpt_status_str_f.
    function ckpt_status_str(status) bind(C, name="ckpt_status_str") result(str)
      import :: c_ptr, c_int32_t
      integer(c_int32_t), value :: status
      type(c_ptr) :: str
    end function ckpt_status_str

    !> const char *ckpt_version(void): see ckpt_version_f.
    function ckpt_version() bind(C, name="ckpt_version") result(str)
      import :: c_ptr
      type(c_ptr) :: str
    end function ckpt_version

    !> int32_t ckpt_set_config(const char *name, const char *value): value absent = NULL (remove).
    function ckpt_set_config(name, value) bind(C, name="ckpt_set_config") result(status)
      import :: c_int32_t, c_char
      character(kind=c_char), dimension(*), intent(in) :: name
      character(kind=c_char), dimension(*), intent(in), optional :: value
      integer(c_int32_t) :: status
    end function ckpt_set_config

    !> int32_t ckpt_set_rank(int32_t rank, int32_t nranks)
    function ckpt_set_rank(rank, nranks) bind(C, name="ckpt_set_rank") result(status)
      import :: c_int32_t
      integer(c_int32_t), value :: rank, nranks
      integer(c_int32_t) :: status
    end function ckpt_set_rank

    !> int32_t ckpt_rank_info(int32_t *rank_out, int32_t *nranks_out)
    function ckpt_rank_info(rank_out, nranks_out) bind(C, name="ckpt_rank_info") result(status)
      import :: c_int32_t
      integer(c_int32_t), intent(inout) :: rank_out, nranks_out
      integer(c_int32_t) :: status
    end function ckpt_rank_info

    !> int32_t ckpt_set_metadata(const char *key, const char *value)
    function ckpt_set_metadata(key, value) bind(C, name="ckpt_set_metadata") result(status)
      import :: c_int32_t, c_char
      character(kind=c_char), dimension(*), intent(in) :: key, value
      integer(c_int32_t) :: status
    end function ckpt_set_metadata

    !> int32_t ckpt_restart_metadata(const char *key, char *buf, size_t cap, size_t *len_out)
    function ckpt_restart_metadata(key, buf, cap, len_out) bind(C, name="ckpt_restart_metadata") result(status)
      import :: c_int32_t, c_char, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: key
      character(kind=c_char), dimension(*), intent(inout) :: buf
      integer(c_size_t), value :: cap
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_restart_metadata

    !> int32_t ckpt_save_buffer(const char *path, const void *buf, size_t len, int64_t step)
    function ckpt_save_buffer(path, buf, len, step) bind(C, name="ckpt_save_buffer") result(status)
      import :: c_int32_t, c_int64_t, c_char, c_ptr, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: path
      type(c_ptr), value :: buf
      integer(c_size_t), value :: len
      integer(c_int64_t), value :: step
      integer(c_int32_t) :: status
    end function ckpt_save_buffer

    !> int32_t ckpt_buffer_size(const char *path, size_t *len_out)
    function ckpt_buffer_size(path, len_out) bind(C, name="ckpt_buffer_size") result(status)
      import :: c_int32_t, c_char, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: path
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int32_t) :: status
    end function ckpt_buffer_size

    !> int32_t ckpt_load_buffer(const char *path, void *buf, size_t cap, size_t *len_out, int64_t *step_out):
    !> step_out optional (NULL).
    function ckpt_load_buffer(path, buf, cap, len_out, step_out) bind(C, name="ckpt_load_buffer") result(status)
      import :: c_int32_t, c_int64_t, c_char, c_ptr, c_size_t
      character(kind=c_char), dimension(*), intent(in) :: path
      type(c_ptr), value :: buf
      integer(c_size_t), value :: cap
      integer(c_size_t), intent(inout) :: len_out
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_load_buffer

    !> int32_t ckpt_next_generation(uint64_t *generation_out)
    function ckpt_next_generation(generation_out) bind(C, name="ckpt_next_generation") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), intent(inout) :: generation_out
      integer(c_int32_t) :: status
    end function ckpt_next_generation

    !> int32_t ckpt_checkpoint_part(uint64_t generation, int64_t step)
    function ckpt_checkpoint_part(generation, step) bind(C, name="ckpt_checkpoint_part") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: generation, step
      integer(c_int32_t) :: status
    end function ckpt_checkpoint_part

    !> int32_t ckpt_finish_step(int32_t committed): after a collective step, every rank says whether it
    !> was committed (1) or not (0).
    function ckpt_finish_step(committed) bind(C, name="ckpt_finish_step") result(status)
      import :: c_int32_t
      integer(c_int32_t), value :: committed
      integer(c_int32_t) :: status
    end function ckpt_finish_step

    !> int32_t ckpt_request_checkpoint(int32_t exit): request a checkpoint (and an exit after it) as a
    !> signal would.
    function ckpt_request_checkpoint(exit) bind(C, name="ckpt_request_checkpoint") result(status)
      import :: c_int32_t
      integer(c_int32_t), value :: exit
      integer(c_int32_t) :: status
    end function ckpt_request_checkpoint

    !> int32_t ckpt_commit_step(uint64_t generation, int64_t step)
    function ckpt_commit_step(generation, step) bind(C, name="ckpt_commit_step") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: generation, step
      integer(c_int32_t) :: status
    end function ckpt_commit_step

    !> int32_t ckpt_get_part_identity(uint64_t generation, struct ckpt_part_identity *identity_out): this
    !> rank's durable part of `generation`, for gathering to rank 0.
    function ckpt_get_part_identity(generation, identity_out) bind(C, name="ckpt_get_part_identity") &
        result(status)
      import :: c_int32_t, c_int64_t, ckpt_part_identity
      integer(c_int64_t), value :: generation
      type(ckpt_part_identity), intent(inout) :: identity_out
      integer(c_int32_t) :: status
    end function ckpt_get_part_identity

    !> int32_t ckpt_commit_step_parts(uint64_t generation, int64_t step,
    !>                                const struct ckpt_part_identity *parts, size_t nparts):
    !> commit the step from every rank's identity (parts(r + 1) is rank r's), on rank 0.
    function ckpt_commit_step_parts(generation, step, parts, nparts) bind(C, name="ckpt_commit_step_parts") &
        result(status)
      import :: c_int32_t, c_int64_t, c_size_t, ckpt_part_identity
      integer(c_int64_t), value :: generation, step
      type(ckpt_part_identity), dimension(*), intent(in) :: parts
      integer(c_size_t), value :: nparts
      integer(c_int32_t) :: status
    end function ckpt_commit_step_parts

    !> int32_t ckpt_newest_valid_generation(uint64_t max_generation, uint64_t *generation_out):
    !> pass huge(0_c_int64_t) for "any generation".
    function ckpt_newest_valid_generation(max_generation, generation_out) &
        bind(C, name="ckpt_newest_valid_generation") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: max_generation
      integer(c_int64_t), intent(inout) :: generation_out
      integer(c_int32_t) :: status
    end function ckpt_newest_valid_generation

    !> int32_t ckpt_select_generation(uint64_t generation, int64_t *step_out): step_out optional (NULL).
    function ckpt_select_generation(generation, step_out) bind(C, name="ckpt_select_generation") result(status)
      import :: c_int32_t, c_int64_t
      integer(c_int64_t), value :: generation
      integer(c_int64_t), intent(inout), optional :: step_out
      integer(c_int32_t) :: status
    end function ckpt_select_generation

    !> int32_t ckpt_restart_info(struct ckpt_restart_details **details_out): a handle (type(c_ptr)) the
    !> caller releases with ckpt_restart_details_free. ckpt_restart_info_f is simpler.
    function ckpt_restart_info(details_out) bind(C, name="ckpt_restart_info") result(status)
      import :: c_int32_t, c_ptr
      type(c_ptr), intent(inout) :: details_out
      integer(c_int32_t) :: status
    end function ckpt_restart_info

    !> int32_t ckpt_restart_details_free(struct ckpt_restart_details *details)
    function ckpt_restart_details_free(details) bind(C, name="ckpt_restart_details_free") result(status)
      import :: c_int32_t, c_ptr
      type(c_ptr), value :: details
      integer(c_int32_t) :: status
    end function ckpt_restart_details_free

    !> int32_t ckpt_restart_details_restored(const struct ckpt_restart_details *details,
    !>     const char **path_out, uint64_t *generation_out, int64_t *step_out): path_out a C string
    !> (ckpt_f_string), generation_out and step_out optional (NULL).
    function ckpt_restart_details_restored(details, path_out, generation_out, step_out) &
        bind(C, name="ckpt_restart_details_restored") result(status)
      import :: c_int32_t, c_int64_t, c_ptr
      type(c_ptr), value :: details
      type(c_ptr), intent(inout) :: path_out
      integer(c_int64_t), intent(inout), optional :: generation_out, step_out
      integer(c_int32_t) :: status
    end function ckpt_restart_details_restored

    !> int32_t ckpt_restart_details_rejected_count(const struct ckpt_restart_details *details,
    !>     size_t *count_out)
    function ckpt_restart_details_rejected_count(details, count_out) &
        bind(C, name="ckpt_restart_details_rejected_count") result(status)
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: details
      integer(c_size_t), intent(inout) :: count_out
      integer(c_int32_t) :: status
    end function ckpt_restart_details_rejected_count

    !> int32_t ckpt_restart_details_rejected(const struct ckpt_restart_details *details, size_t index,
    !>     const char **path_out, const char **reason_out, int32_t *status_out): index from 0; status_out
    !> optional (NULL).
    function ckpt_restart_details_rejected(details, index, path_out, reason_out, status_out) &
        bind(C, name="ckpt_restart_details_rejected") result(status)
      import :: c_int32_t, c_size_t, c_ptr
      type(c_ptr), value :: details
      integer(c_size_t), value :: index
      type(c_ptr), intent(inout) :: path_out, reason_out
      integer(c_int32_t), intent(inout), optional :: status_out
      integer(c_int32_t) :: status
    end function ckpt_restart_details_rejected
  end interface

contains

  !> A Fortran string as a NUL-terminated C string (trailing blanks removed).
  pure function ckpt_c_string(s) result(c)
    character(len=*), intent(in) :: s
    character(kind=c_char, len=:), allocatable :: c
    c = trim(s) // c_null_char
  end function ckpt_c_string

  !> The NUL-terminated C string at p as a Fortran string ("" for a NULL pointer). The C string is copied.
  function ckpt_f_string(p) result(s)
    type(c_ptr), intent(in) :: p
    character(len=:), allocatable :: s
    character(kind=c_char), dimension(:), pointer :: chars
    integer :: n, i
    if (.not. c_associated(p)) then
      s = ""
      return
    end if
    call c_f_pointer(p, chars, [huge(0)])
    n = 0
    do while (chars(n + 1) /= c_null_char)
      n = n + 1
    end do
    allocate(character(len=n) :: s)
    do i = 1, n
      s(i:i) = chars(i)
    end do
  end function ckpt_f_string

  !> ckpt_init with a Fortran string; name absent = the default name (CKPT_NAME, SLURM_JOB_NAME or "ckpt").
  function ckpt_init_f(name) result(status)
    character(len=*), intent(in), optional :: name
    integer(c_int32_t) :: status
    if (present(name)) then
      status = ckpt_init(ckpt_c_string(name))
    else
      status = ckpt_init()
    end if
  end function ckpt_init_f

  !> ckpt_set_config with Fortran strings; value absent removes an earlier setting.
  function ckpt_set_config_f(name, value) result(status)
    character(len=*), intent(in) :: name
    character(len=*), intent(in), optional :: value
    integer(c_int32_t) :: status
    if (present(value)) then
      status = ckpt_set_config(ckpt_c_string(name), ckpt_c_string(value))
    else
      status = ckpt_set_config(ckpt_c_string(name))
    end if
  end function ckpt_set_config_f

  !> ckpt_set_metadata with Fortran strings.
  function ckpt_set_metadata_f(key, value) result(status)
    character(len=*), intent(in) :: key, value
    integer(c_int32_t) :: status
    status = ckpt_set_metadata(ckpt_c_string(key), ckpt_c_string(value))
  end function ckpt_set_metadata_f

  !> ckpt_restart_metadata into an allocatable Fortran string of the exact length (set only on success).
  function ckpt_restart_metadata_f(key, value) result(status)
    character(len=*), intent(in) :: key
    character(len=:), allocatable, intent(inout) :: value
    integer(c_int32_t) :: status
    character(kind=c_char), dimension(:), allocatable :: buf
    integer(c_size_t) :: cap, n
    integer :: i
    cap = 256
    do
      allocate(buf(cap))
      n = 0
      status = ckpt_restart_metadata(ckpt_c_string(key), buf, cap, n)
      if (status /= CKPT_ERR_BUFFER_TOO_SMALL .or. cap >= 2_c_size_t**30) exit
      deallocate(buf)
      cap = cap * 4
    end do
    if (status == CKPT_OK) then
      if (allocated(value)) deallocate(value)
      allocate(character(len=n) :: value)
      do i = 1, int(n)
        value(i:i) = buf(i)
      end do
    end if
  end function ckpt_restart_metadata_f

  !> Address and size in bytes of any contiguous variable (assumed type and rank); ok = .false. when it
  !> is not contiguous. An empty array gives (NULL, 0).
  subroutine region_of(x, nbytes_each, ptr, len, ok)
    type(*), dimension(..), intent(in), target :: x
    integer(c_size_t), intent(in) :: nbytes_each
    type(c_ptr), intent(out) :: ptr
    integer(c_size_t), intent(out) :: len
    logical, intent(out) :: ok
    ptr = c_null_ptr
    len = 0
    ok = is_contiguous(x)
    if (.not. ok) return
    len = int(size(x), c_size_t) * nbytes_each
    if (len > 0) ptr = c_loc(x)
  end subroutine region_of

  !> Bytes per element of x: storage_size, except for CHARACTER, where gfortran's storage_size of an
  !> unlimited polymorphic object ignores the length (gfortran 12), so the length is taken (ranks 0 to 7).
  function element_bytes(x) result(n)
    class(*), dimension(..), intent(in) :: x
    integer(c_size_t) :: n
    n = int(storage_size(x) / 8, c_size_t)
    if (size(x) == 0) return
    select rank (x)
    rank (0)
      n = char_bytes(x, n)
    rank (1)
      n = char_bytes(x(1), n)
    rank (2)
      n = char_bytes(x(1, 1), n)
    rank (3)
      n = char_bytes(x(1, 1, 1), n)
    rank (4)
      n = char_bytes(x(1, 1, 1, 1), n)
    rank (5)
      n = char_bytes(x(1, 1, 1, 1, 1), n)
    rank (6)
      n = char_bytes(x(1, 1, 1, 1, 1, 1), n)
    rank (7)
      n = char_bytes(x(1, 1, 1, 1, 1, 1, 1), n)
    end select
  end function element_bytes

  !> len(e) (bytes) when e is a CHARACTER of kind c_char, else `other`.
  function char_bytes(e, other) result(n)
    class(*), intent(in) :: e
    integer(c_size_t), intent(in) :: other
    integer(c_size_t) :: n
    select type (e)
    type is (character(len=*, kind=c_char))
      n = int(len(e), c_size_t)
    class default
      n = other
    end select
  end function char_bytes

  !> ckpt_protect for a whole variable or array x of any type and rank: protects
  !> c_loc(x) and its size in bytes. x must be contiguous (else CKPT_ERR_INVALID_ARGUMENT, without a
  !> ckpt_last_error message), have the TARGET attribute or be a pointer, and stay allocated while
  !> protected; it is written in place by ckpt_restart.
  function ckpt_protect_f(id, x) result(status)
    integer(c_int32_t), intent(in) :: id
    class(*), dimension(..), intent(inout), target :: x
    integer(c_int32_t) :: status
    type(c_ptr) :: ptr
    integer(c_size_t) :: len
    logical :: ok
    call region_of(x, element_bytes(x), ptr, len, ok)
    if (.not. ok) then
      status = CKPT_ERR_INVALID_ARGUMENT
      return
    end if
    status = ckpt_protect(id, ptr, len)
  end function ckpt_protect_f

  !> ckpt_protect_named for a whole variable or array x of any type and rank, called `name` (trailing
  !> blanks removed; 1 to 64 bytes): as ckpt_protect_f, but the name is stored in the checkpoint and
  !> ckpt_restart reads x back from the region of that name, so a field added or moved between two others
  !> is never restored from another array of the same size, and errors name it (region "e").
  function ckpt_protect_named_f(name, x) result(status)
    character(len=*), intent(in) :: name
    class(*), dimension(..), intent(inout), target :: x
    integer(c_int32_t) :: status
    type(c_ptr) :: ptr
    integer(c_size_t) :: len
    logical :: ok
    call region_of(x, element_bytes(x), ptr, len, ok)
    if (.not. ok) then
      status = CKPT_ERR_INVALID_ARGUMENT
      return
    end if
    status = ckpt_protect_named(ckpt_c_string(name), ptr, len)
  end function ckpt_protect_named_f

  !> ckpt_unprotect_named with a Fortran string.
  function ckpt_unprotect_named_f(name) result(status)
    character(len=*), intent(in) :: name
    integer(c_int32_t) :: status
    status = ckpt_unprotect_named(ckpt_c_string(name))
  end function ckpt_unprotect_named_f

  !> ckpt_restart_size_named with a Fortran string: the stored size in bytes of the region called name
  !> (to allocate it before ckpt_protect_named_f and ckpt_restart); len_out is set only on success.
  function ckpt_restart_size_named_f(name, len_out) result(status)
    character(len=*), intent(in) :: name
    integer(c_size_t), intent(inout) :: len_out
    integer(c_int32_t) :: status
    status = ckpt_restart_size_named(ckpt_c_string(name), len_out)
  end function ckpt_restart_size_named_f

  !> ckpt_save_buffer of the whole contiguous variable or array x (any type and rank).
  function ckpt_save_buffer_f(path, x, step) result(status)
    character(len=*), intent(in) :: path
    class(*), dimension(..), intent(in), target :: x
    integer(c_int64_t), intent(in) :: step
    integer(c_int32_t) :: status
    type(c_ptr) :: ptr
    integer(c_size_t) :: len
    logical :: ok
    call region_of(x, element_bytes(x), ptr, len, ok)
    if (.not. ok) then
      status = CKPT_ERR_INVALID_ARGUMENT
      return
    end if
    status = ckpt_save_buffer(ckpt_c_string(path), ptr, len, step)
  end function ckpt_save_buffer_f

  !> ckpt_buffer_size with a Fortran path.
  function ckpt_buffer_size_f(path, len_out) result(status)
    character(len=*), intent(in) :: path
    integer(c_size_t), intent(inout) :: len_out
    integer(c_int32_t) :: status
    status = ckpt_buffer_size(ckpt_c_string(path), len_out)
  end function ckpt_buffer_size_f

  !> ckpt_load_buffer into the whole contiguous variable or array x (its size is the capacity); len_out
  !> and step_out (optional) as in C.
  function ckpt_load_buffer_f(path, x, len_out, step_out) result(status)
    character(len=*), intent(in) :: path
    class(*), dimension(..), intent(inout), target :: x
    integer(c_size_t), intent(inout) :: len_out
    integer(c_int64_t), intent(inout), optional :: step_out
    integer(c_int32_t) :: status
    type(c_ptr) :: ptr
    integer(c_size_t) :: len
    logical :: ok
    call region_of(x, element_bytes(x), ptr, len, ok)
    if (.not. ok) then
      status = CKPT_ERR_INVALID_ARGUMENT
      return
    end if
    status = ckpt_load_buffer(ckpt_c_string(path), ptr, len, len_out, step_out)
  end function ckpt_load_buffer_f

  !> What a restart uses (ckpt_restart_info): the file, its generation and step, and how many newer files
  !> were rejected (ckpt_restart_rejected_f reads them). The arguments are set only on success; the status
  !> is CKPT_ERR_NO_CHECKPOINT on a first run.
  function ckpt_restart_info_f(path, generation, step, nrejected) result(status)
    character(len=:), allocatable, intent(inout) :: path
    integer(c_int64_t), intent(inout) :: generation, step
    integer, intent(inout) :: nrejected
    integer(c_int32_t) :: status, ignored
    type(c_ptr) :: d, p
    integer(c_int64_t) :: g, st
    integer(c_size_t) :: n
    d = c_null_ptr
    status = ckpt_restart_info(d)
    if (status /= CKPT_OK) return
    p = c_null_ptr
    status = ckpt_restart_details_restored(d, p, g, st)
    if (status == CKPT_OK) status = ckpt_restart_details_rejected_count(d, n)
    if (status == CKPT_OK) then
      path = ckpt_f_string(p)
      generation = g
      step = st
      nrejected = int(n)
    end if
    ignored = ckpt_restart_details_free(d)
  end function ckpt_restart_info_f

  !> Newer file number i (1 to nrejected of ckpt_restart_info_f) that the restart rejected: its path, why,
  !> and the status code of the reason (CKPT_ERR_CORRUPT, ...). Set only on success; CKPT_ERR_INVALID_ARGUMENT
  !> for an i out of range.
  function ckpt_restart_rejected_f(i, path, reason, code) result(status)
    integer, intent(in) :: i
    character(len=:), allocatable, intent(inout) :: path, reason
    integer(c_int32_t), intent(inout) :: code
    integer(c_int32_t) :: status, ignored, c
    type(c_ptr) :: d, p, r
    d = c_null_ptr
    status = ckpt_restart_info(d)
    if (status /= CKPT_OK) return
    p = c_null_ptr
    r = c_null_ptr
    if (i < 1) then
      status = ckpt_restart_details_rejected(d, huge(0_c_size_t), p, r, c)
    else
      status = ckpt_restart_details_rejected(d, int(i - 1, c_size_t), p, r, c)
    end if
    if (status == CKPT_OK) then
      path = ckpt_f_string(p)
      reason = ckpt_f_string(r)
      code = c
    end if
    ignored = ckpt_restart_details_free(d)
  end function ckpt_restart_rejected_f

  !> This thread's message for the last failed call ("" when nothing failed yet).
  function ckpt_last_error_f() result(s)
    character(len=:), allocatable :: s
    s = ckpt_f_string(ckpt_last_error())
  end function ckpt_last_error_f

  !> The fixed description of a status code.
  function ckpt_status_str_f(status) result(s)
    integer(c_int32_t), intent(in) :: status
    character(len=:), allocatable :: s
    s = ckpt_f_string(ckpt_status_str(status))
  end function ckpt_status_str_f

  !> The library's version, e.g. "0.1.0" (compare with CKPT_VERSION_STRING, the version compiled against).
  function ckpt_version_f() result(s)
    character(len=:), allocatable :: s
    s = ckpt_f_string(ckpt_version())
  end function ckpt_version_f

end module ckpt
