! Fortran tests of libckpt through module ckpt (include/ckpt.f90): every binding's success and error
! paths, as ckpt-ffi/tests/c/test_api.c does for C. Usage: test_api DIR (an empty scratch directory).
! Prints "CONST name value" lines for the constant check of ckpt-ffi/tests/fortran.rs; exit status 0 when
! every check passes.
module checks
  use, intrinsic :: iso_c_binding
  use ckpt
  implicit none
  integer :: failures = 0
  character(len=4096) :: dir = ""
  interface
    function c_raise(sig) bind(C, name="raise") result(rc)
      import :: c_int
      integer(c_int), value :: sig
      integer(c_int) :: rc
    end function c_raise
  end interface
  integer(c_int), parameter :: SIGUSR1 = 10, SIGTERM = 15
contains
  subroutine check(cond, line)
    logical, intent(in) :: cond
    integer, intent(in) :: line
    if (.not. cond) then
      write(0, '(a,i0,a,a)') 'test_api.f90:', line, ': check failed; last error: ', ckpt_last_error_f()
      failures = failures + 1
    end if
  end subroutine check

  subroutine expect(got, want, line)
    integer(c_int32_t), intent(in) :: got, want
    integer, intent(in) :: line
    if (got /= want) then
      write(0, '(a,i0,a,i0,a,i0,a,a)') 'test_api.f90:', line, ': got status ', got, ', expected ', want, &
        '; last error: ', ckpt_last_error_f()
      failures = failures + 1
    end if
  end subroutine expect

  function path_in(name) result(p)
    character(len=*), intent(in) :: name
    character(len=:), allocatable :: p
    p = trim(dir) // "/" // name
  end function path_in

  logical function exists(path)
    character(len=*), intent(in) :: path
    inquire(file=path, exist=exists)
  end function exists

  subroutine flip_byte(path, pos)
    character(len=*), intent(in) :: path
    integer, intent(in) :: pos
    integer :: u, ios
    character(len=1) :: c
    open(newunit=u, file=path, access='stream', form='unformatted', action='readwrite', status='old', iostat=ios)
    if (ios /= 0) return
    read(u, pos=pos) c
    write(u, pos=pos) achar(ieor(iachar(c), 90))
    close(u)
  end subroutine flip_byte

  subroutine constants()
    integer(c_int32_t) :: codes(24)
    integer :: i, j
    character(len=40) :: names(24)
    codes = [CKPT_OK, CKPT_ERR_IO, CKPT_ERR_NOT_FOUND, CKPT_ERR_CORRUPT, CKPT_ERR_UNSUPPORTED_VERSION, &
             CKPT_ERR_TOO_LARGE, CKPT_ERR_INVALID_ARGUMENT, CKPT_ERR_NO_VALID_CHECKPOINT, CKPT_ERR_CONFLICT, &
             CKPT_ERR_SECTION_NOT_FOUND, CKPT_ERR_ENCODING, CKPT_ERR_INVALID_STATE, CKPT_ERR_UNTRUSTED, &
             CKPT_ERR_NULL_ARGUMENT, &
             CKPT_ERR_NOT_INITIALIZED, CKPT_ERR_ALREADY_INITIALIZED, CKPT_ERR_UNKNOWN_REGION, &
             CKPT_ERR_SIZE_MISMATCH, CKPT_ERR_NO_CHECKPOINT, CKPT_ERR_BUFFER_TOO_SMALL, CKPT_ERR_INVALID_UTF8, &
             CKPT_ERR_MPI, CKPT_ERR_OTHER, CKPT_ERR_PANIC]
    names = [character(len=40) :: 'CKPT_OK', 'CKPT_ERR_IO', 'CKPT_ERR_NOT_FOUND', 'CKPT_ERR_CORRUPT', &
             'CKPT_ERR_UNSUPPORTED_VERSION', 'CKPT_ERR_TOO_LARGE', 'CKPT_ERR_INVALID_ARGUMENT', &
             'CKPT_ERR_NO_VALID_CHECKPOINT', 'CKPT_ERR_CONFLICT', 'CKPT_ERR_SECTION_NOT_FOUND', &
             'CKPT_ERR_ENCODING', 'CKPT_ERR_INVALID_STATE', 'CKPT_ERR_UNTRUSTED', 'CKPT_ERR_NULL_ARGUMENT', &
             'CKPT_ERR_NOT_INITIALIZED', &
             'CKPT_ERR_ALREADY_INITIALIZED', 'CKPT_ERR_UNKNOWN_REGION', 'CKPT_ERR_SIZE_MISMATCH', &
             'CKPT_ERR_NO_CHECKPOINT', 'CKPT_ERR_BUFFER_TOO_SMALL', 'CKPT_ERR_INVALID_UTF8', 'CKPT_ERR_MPI', &
             'CKPT_ERR_OTHER', 'CKPT_ERR_PANIC']
    do i = 1, size(codes)
      write(*, '(a,1x,a,1x,i0)') 'CONST', trim(names(i)), codes(i)
      call check(len(ckpt_status_str_f(codes(i))) > 0, __LINE__)
      call check(ckpt_status_str_f(codes(i)) /= 'unknown status code', __LINE__)
      do j = 1, i - 1
        call check(codes(i) /= codes(j), __LINE__)
      end do
    end do
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_VERSION_MAJOR', CKPT_VERSION_MAJOR
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_VERSION_MINOR', CKPT_VERSION_MINOR
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_VERSION_PATCH', CKPT_VERSION_PATCH
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_VERSION_NUMBER', CKPT_VERSION_NUMBER
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_PART_OWN', CKPT_PART_OWN
    write(*, '(a,1x,a,1x,i0)') 'CONST', 'CKPT_PART_PARTNER', CKPT_PART_PARTNER
    write(*, '(a,1x,a,1x,a)') 'CONST', 'CKPT_VERSION_STRING', CKPT_VERSION_STRING
    call check(ckpt_status_str_f(12345_c_int32_t) == 'unknown status code', __LINE__)
    call check(ckpt_version_f() == CKPT_VERSION_STRING, __LINE__)
    call check(c_associated(ckpt_version()), __LINE__)
    call check(c_associated(ckpt_last_error()), __LINE__)
    call check(ckpt_c_string("ab  ") == "ab" // c_null_char, __LINE__)
    call check(ckpt_f_string(c_null_ptr) == "", __LINE__)
  end subroutine constants

  subroutine before_init()
    real(c_double), target :: x
    integer(c_int32_t) :: found
    integer(c_int64_t) :: step
    integer(c_size_t) :: len
    character(kind=c_char) :: bad(2)
    x = 1
    found = 7; step = 7; len = 7
    call check(ckpt_should_checkpoint() == 0, __LINE__)
    call check(ckpt_should_exit() == 0, __LINE__)
    call expect(ckpt_protect(0, c_loc(x), c_sizeof(x)), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call check(index(ckpt_last_error_f(), "ckpt_init") > 0, __LINE__)
    call expect(ckpt_unprotect(0), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call expect(ckpt_checkpoint(1_c_int64_t), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call expect(ckpt_have_restart(found, step), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call check(found == 7 .and. step == 7, __LINE__)
    call expect(ckpt_restart_size(0, len), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call check(len == 7, __LINE__)
    call expect(ckpt_restart(step), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call expect(ckpt_finalize(), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call expect(ckpt_set_config_f("PATH", "x"), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_set_config("CKPT_DIR" // c_null_char, trim(dir) // c_null_char), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_LOG", "off"), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_SOCKET", "0"), CKPT_OK, __LINE__)
    call expect(ckpt_set_rank(2, 2), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_set_rank(-1, 2), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_set_rank(0, 1), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_INTERVAL", "1:2:3:4"), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("fapi"), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call check(index(ckpt_last_error_f(), "CKPT_INTERVAL") > 0, __LINE__)
    call expect(ckpt_set_config_f("CKPT_INTERVAL"), CKPT_OK, __LINE__) ! absent value = NULL: remove
    bad = [char(255, kind=c_char), c_null_char]
    call expect(ckpt_init(bad), CKPT_ERR_INVALID_UTF8, __LINE__)
  end subroutine before_init

  subroutine first_run()
    integer, parameter :: n = 1000
    real(c_double), allocatable, target :: field(:)
    integer(c_int64_t), target :: iteration
    integer(c_int32_t) :: rank, nranks, found
    integer(c_int64_t) :: step
    integer(c_size_t) :: len
    real(c_double), target :: sect(4, 4)
    character(len=8), target :: names(3), label
    integer :: i
    call expect(ckpt_init_f("fapi"), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("fapi"), CKPT_ERR_ALREADY_INITIALIZED, __LINE__)
    call expect(ckpt_set_config_f("CKPT_KEEP", "3"), CKPT_ERR_INVALID_STATE, __LINE__)
    call expect(ckpt_set_rank(0, 1), CKPT_ERR_INVALID_STATE, __LINE__)
    rank = -1; nranks = -1
    call expect(ckpt_rank_info(rank, nranks), CKPT_OK, __LINE__)
    call check(rank == 0 .and. nranks == 1, __LINE__)

    allocate(field(n))
    iteration = 0
    field = [(i * 0.5_c_double, i = 0, n - 1)]
    call expect(ckpt_protect(0, c_null_ptr, 8_c_size_t), CKPT_ERR_NULL_ARGUMENT, __LINE__)
    ! the raw form with c_loc/c_sizeof, and the wrapper for arrays and scalars
    call expect(ckpt_protect(0, c_loc(field), size(field, kind=c_size_t) * c_sizeof(field(1))), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(0, field), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(1, iteration), CKPT_OK, __LINE__)
    call expect(ckpt_protect(2, c_null_ptr, 0_c_size_t), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(3, sect(1, :)), CKPT_ERR_INVALID_ARGUMENT, __LINE__) ! not contiguous
    names = [character(len=8) :: "alpha", "beta", "gamma"]
    label = "heat"
    call expect(ckpt_protect_f(4, names), CKPT_OK, __LINE__) ! CHARACTER: len * size bytes
    call expect(ckpt_protect_f(5, label), CKPT_OK, __LINE__)
    call expect(ckpt_unprotect(42), CKPT_ERR_UNKNOWN_REGION, __LINE__)
    call check(index(ckpt_last_error_f(), "42") > 0, __LINE__)
    call expect(ckpt_set_metadata_f("code", "heat v1"), CKPT_OK, __LINE__)
    call expect(ckpt_set_metadata("" // c_null_char, "x" // c_null_char), CKPT_ERR_INVALID_ARGUMENT, __LINE__)

    found = 7; step = -1
    call expect(ckpt_have_restart(found), CKPT_OK, __LINE__) ! step_out absent = NULL
    call check(found == 0, __LINE__)
    call expect(ckpt_restart(step), CKPT_ERR_NO_CHECKPOINT, __LINE__)
    len = 0
    call expect(ckpt_restart_size(0, len), CKPT_ERR_NO_CHECKPOINT, __LINE__)

    call check(ckpt_should_checkpoint() == 0, __LINE__)
    call check(c_raise(SIGUSR1) == 0, __LINE__)
    call check(ckpt_should_checkpoint() == 1, __LINE__)
    call check(ckpt_should_exit() == 0, __LINE__)
    iteration = 10
    call expect(ckpt_checkpoint(iteration), CKPT_OK, __LINE__)
    call check(ckpt_should_checkpoint() == 0, __LINE__)
    call check(ckpt_should_exit() == 0, __LINE__)
    field = [(i * 2.0_c_double, i = 0, n - 1)]
    iteration = 20
    call check(c_raise(SIGTERM) == 0, __LINE__)
    call check(ckpt_should_checkpoint() == 1, __LINE__)
    call expect(ckpt_checkpoint(iteration), CKPT_OK, __LINE__)
    call check(ckpt_should_exit() == 1, __LINE__)
    call check(exists(path_in("fapi.ckpt")), __LINE__)
    call check(exists(path_in("fapi.ckpt.2")), __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
    call check(ckpt_should_checkpoint() == 0, __LINE__)
  end subroutine first_run

  subroutine restart_run()
    integer, parameter :: n = 1000
    integer(c_int32_t) :: found
    integer(c_int64_t) :: step, gen
    integer(c_size_t) :: rlen, mlen
    real(c_double), target :: small(10)
    real(c_double), allocatable, target :: field(:)
    integer(c_int64_t), target :: iteration
    character(len=:), allocatable :: meta
    character(kind=c_char) :: buf(64)
    character(len=8), target :: names(3), label
    integer :: i
    call expect(ckpt_init_f("fapi"), CKPT_OK, __LINE__)
    found = 0; step = -1
    call expect(ckpt_have_restart(found, step), CKPT_OK, __LINE__)
    call check(found == 1 .and. step == 20, __LINE__)
    rlen = 0
    call expect(ckpt_restart_size(0, rlen), CKPT_OK, __LINE__)
    call check(rlen == n * c_sizeof(1.0_c_double), __LINE__)
    call expect(ckpt_restart_size(9, rlen), CKPT_ERR_SECTION_NOT_FOUND, __LINE__)
    call expect(ckpt_restart_size(4, rlen), CKPT_OK, __LINE__)
    call check(rlen == 24, __LINE__)
    call expect(ckpt_restart_size(5, rlen), CKPT_OK, __LINE__)
    call check(rlen == 8, __LINE__)
    call expect(ckpt_restart_size(0, rlen), CKPT_OK, __LINE__)
    call check(index(ckpt_last_error_f(), "fapi.ckpt") > 0 .and. index(ckpt_last_error_f(), "region 9") > 0, __LINE__)

    ! wrong size: nothing is written, not even the regions that would fit
    small = -1
    iteration = -1
    call expect(ckpt_protect_f(1, iteration), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(0, small), CKPT_OK, __LINE__)
    step = -1
    call expect(ckpt_restart(step), CKPT_ERR_SIZE_MISMATCH, __LINE__)
    call check(index(ckpt_last_error_f(), "region 0") > 0, __LINE__)
    call check(step == -1 .and. iteration == -1 .and. small(1) == -1, __LINE__)

    ! a protected region the checkpoint lacks
    allocate(field(rlen / c_sizeof(1.0_c_double)))
    call expect(ckpt_protect_f(0, field), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(7, small), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_ERR_SECTION_NOT_FOUND, __LINE__)
    call expect(ckpt_unprotect(7), CKPT_OK, __LINE__)

    names = ""
    label = ""
    call expect(ckpt_protect_f(4, names), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(5, label), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_OK, __LINE__)
    call check(step == 20 .and. iteration == 20, __LINE__)
    call check(names(2) == "beta" .and. names(3) == "gamma" .and. label == "heat", __LINE__)
    call check(all(field == [(i * 2.0_c_double, i = 0, n - 1)]), __LINE__)
    call expect(ckpt_restart(), CKPT_OK, __LINE__) ! step_out absent = NULL

    call expect(ckpt_restart_metadata_f("code", meta), CKPT_OK, __LINE__)
    call check(meta == "heat v1" .and. len(meta) == 7, __LINE__)
    mlen = 0
    call expect(ckpt_restart_metadata("code" // c_null_char, buf, 64_c_size_t, mlen), CKPT_OK, __LINE__)
    call check(mlen == 7 .and. buf(8) == c_null_char, __LINE__)
    call expect(ckpt_restart_metadata("code" // c_null_char, buf, 3_c_size_t, mlen), CKPT_ERR_BUFFER_TOO_SMALL, &
                __LINE__)
    call expect(ckpt_restart_metadata_f("nope", meta), CKPT_ERR_SECTION_NOT_FOUND, __LINE__)
    call check(meta == "heat v1", __LINE__) ! untouched on failure

    gen = 0
    call expect(ckpt_next_generation(gen), CKPT_OK, __LINE__)
    call check(gen == 3, __LINE__)
    call expect(ckpt_newest_valid_generation(huge(0_c_int64_t), gen), CKPT_OK, __LINE__)
    call check(gen == 2, __LINE__)
    call expect(ckpt_newest_valid_generation(1_c_int64_t, gen), CKPT_OK, __LINE__)
    call check(gen == 1, __LINE__)
    call expect(ckpt_select_generation(1_c_int64_t, step), CKPT_OK, __LINE__)
    call check(step == 10, __LINE__)
    call expect(ckpt_restart(step), CKPT_OK, __LINE__)
    call check(step == 10 .and. iteration == 10 .and. field(4) == 1.5_c_double, __LINE__)
    call expect(ckpt_select_generation(7_c_int64_t, step), CKPT_ERR_NO_CHECKPOINT, __LINE__)
    call expect(ckpt_select_generation(2_c_int64_t), CKPT_OK, __LINE__) ! step_out absent = NULL
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
  end subroutine restart_run

  subroutine multi_rank_protocol()
    ! The calls ckpt_mpi.f90 builds on, in one process playing rank 0 of 2 (one checkpointer per process,
    ! so rank 1's part never comes): a part is written, the commit reports the missing rank, and there is
    ! no generation to restart from. The 4-rank runs of ckpt-ffi/tests/mpi.rs cover the successful paths.
    integer(c_int64_t) :: gen, step
    type(ckpt_part_identity) :: ids(2)
    call expect(ckpt_set_config_f("CKPT_DIR", path_in("parts")), CKPT_OK, __LINE__)
    call expect(ckpt_set_rank(0, 2), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_COMMIT_TIMEOUT", "1"), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("parts"), CKPT_OK, __LINE__)
    gen = 0
    call expect(ckpt_next_generation(gen), CKPT_OK, __LINE__)
    call check(gen == 1, __LINE__)
    call expect(ckpt_checkpoint_part(0_c_int64_t, 5_c_int64_t), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_checkpoint_part(gen, 5_c_int64_t), CKPT_OK, __LINE__)
    call check(exists(path_in("parts/parts.ckpt.parts/1/rank0.ckpt")), __LINE__)
    ! the identity of the part, for gathering to rank 0; committing from identities needs every rank's
    call expect(ckpt_get_part_identity(gen, ids(1)), CKPT_OK, __LINE__)
    call check(ids(1)%generation == gen .and. ids(1)%step == 5 .and. ids(1)%rank == 0 .and. ids(1)%nranks == 2, __LINE__)
    call check(ids(1)%file_len > 0, __LINE__)
    call expect(ckpt_get_part_identity(gen + 1, ids(2)), CKPT_ERR_INVALID_STATE, __LINE__)
    call expect(ckpt_commit_step_parts(gen, 5_c_int64_t, ids, 1_c_size_t), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    ids(2) = ids(1) ! rank 0's identity twice: not rank 1's part
    call expect(ckpt_commit_step_parts(gen, 5_c_int64_t, ids, 2_c_size_t), CKPT_ERR_INVALID_STATE, __LINE__)
    call check(index(ckpt_last_error_f(), "rank 1/2") > 0, __LINE__)
    ! rank 1's part is missing: the commit waits (CKPT_COMMIT_TIMEOUT) and reports it
    call expect(ckpt_commit_step(gen, 5_c_int64_t), CKPT_ERR_INVALID_STATE, __LINE__)
    call check(index(ckpt_last_error_f(), "rank") > 0, __LINE__)
    call expect(ckpt_newest_valid_generation(huge(0_c_int64_t), gen), CKPT_OK, __LINE__)
    call check(gen == 0, __LINE__)
    step = -1
    call expect(ckpt_select_generation(1_c_int64_t, step), CKPT_ERR_NO_CHECKPOINT, __LINE__)
    call check(step == -1, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_COMMIT_TIMEOUT"), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_DIR", dir), CKPT_OK, __LINE__)
    call expect(ckpt_set_rank(0, 1), CKPT_OK, __LINE__)
  end subroutine multi_rank_protocol

  ! ckpt_restart_info: the file, generation and step restored, the newer files rejected and why; the
  ! wrappers (ckpt_restart_info_f, ckpt_restart_rejected_f) and the handle functions.
  subroutine restart_info()
    type(c_ptr) :: d, p, r
    character(len=:), allocatable :: path, reason
    integer(c_int64_t) :: gen, step
    integer(c_size_t) :: n
    integer(c_int32_t) :: code
    integer :: nrejected, i
    logical :: all_corrupt
    path = "unchanged"
    call expect(ckpt_restart_info_f(path, gen, step, nrejected), CKPT_ERR_NOT_INITIALIZED, __LINE__)
    call check(path == "unchanged", __LINE__)
    call expect(ckpt_init_f("fapi"), CKPT_OK, __LINE__)
    gen = 0; step = 0; nrejected = -1
    call expect(ckpt_restart_info_f(path, gen, step, nrejected), CKPT_OK, __LINE__)
    call check(index(path, "fapi.ckpt") > 0 .and. gen == 2 .and. step == 20 .and. nrejected == 0, __LINE__)
    call expect(ckpt_restart_rejected_f(1, path, reason, code), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_restart_rejected_f(0, path, reason, code), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    ! the handle functions
    d = c_null_ptr
    call expect(ckpt_restart_info(d), CKPT_OK, __LINE__)
    call check(c_associated(d), __LINE__)
    p = c_null_ptr
    call expect(ckpt_restart_details_restored(d, p), CKPT_OK, __LINE__) ! generation_out, step_out absent = NULL
    call check(index(ckpt_f_string(p), "fapi.ckpt") > 0, __LINE__)
    call expect(ckpt_restart_details_restored(c_null_ptr, p, gen, step), CKPT_ERR_NULL_ARGUMENT, __LINE__)
    n = 99
    call expect(ckpt_restart_details_rejected_count(d, n), CKPT_OK, __LINE__)
    call check(n == 0, __LINE__)
    call expect(ckpt_restart_details_rejected(d, 0_c_size_t, p, r), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_restart_details_free(d), CKPT_OK, __LINE__)
    call expect(ckpt_restart_details_free(c_null_ptr), CKPT_OK, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)

    ! damage the newest generation (another offset than damaged() uses): generation 1 is restored
    call flip_byte(path_in("fapi.ckpt.2"), 4096 + 50 + 1)
    call expect(ckpt_init_f("fapi"), CKPT_OK, __LINE__)
    call expect(ckpt_restart_info_f(path, gen, step, nrejected), CKPT_OK, __LINE__)
    call check(index(path, "fapi.ckpt.1") > 0 .and. gen == 1 .and. step == 10 .and. nrejected >= 1, __LINE__)
    all_corrupt = .true.
    do i = 1, nrejected
      code = 0
      call expect(ckpt_restart_rejected_f(i, path, reason, code), CKPT_OK, __LINE__)
      all_corrupt = all_corrupt .and. code == CKPT_ERR_CORRUPT .and. index(reason, "crc32") > 0 &
                    .and. index(path, "fapi.ckpt") > 0
    end do
    call check(all_corrupt, __LINE__)
    call expect(ckpt_restart_rejected_f(nrejected + 1, path, reason, code), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    d = c_null_ptr
    call expect(ckpt_restart_info(d), CKPT_OK, __LINE__)
    code = 0
    call expect(ckpt_restart_details_rejected(d, 0_c_size_t, p, r, code), CKPT_OK, __LINE__)
    call check(code == CKPT_ERR_CORRUPT .and. index(ckpt_f_string(r), "crc32") > 0, __LINE__)
    call expect(ckpt_restart_details_free(d), CKPT_OK, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
  end subroutine restart_info

  subroutine damaged()
    integer(c_int32_t) :: found
    ! fapi.ckpt is another name (hard link) of fapi.ckpt.2: damage each file once
    call flip_byte(path_in("fapi.ckpt.1"), 4096 + 5 + 1)
    call flip_byte(path_in("fapi.ckpt.2"), 4096 + 5 + 1)
    call expect(ckpt_init_f("fapi"), CKPT_OK, __LINE__)
    found = 7
    call expect(ckpt_have_restart(found), CKPT_ERR_NO_VALID_CHECKPOINT, __LINE__)
    call check(found == 7, __LINE__)
    call check(index(ckpt_last_error_f(), "fapi.ckpt.1") > 0 .and. index(ckpt_last_error_f(), "crc32") > 0, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
  end subroutine damaged

  subroutine buffers()
    integer(c_int8_t), target :: data(5000), back(5000)
    real(c_double), target :: grid(10, 20), grid_back(10, 20)
    integer(c_size_t) :: len
    integer(c_int64_t) :: step
    character(len=:), allocatable :: p
    integer :: i, u
    p = path_in("state.bin")
    data = [(int(mod(i * 7, 256) - 128, c_int8_t), i = 0, 4999)]
    call expect(ckpt_save_buffer(p // c_null_char, c_null_ptr, 5_c_size_t, 3_c_int64_t), CKPT_ERR_NULL_ARGUMENT, &
                __LINE__)
    call expect(ckpt_save_buffer(p // c_null_char, c_loc(data), c_sizeof(data), 3_c_int64_t), CKPT_OK, __LINE__)
    len = 0; step = 0
    call expect(ckpt_buffer_size_f(p, len), CKPT_OK, __LINE__)
    call check(len == 5000, __LINE__)
    call expect(ckpt_buffer_size(p // c_null_char, len), CKPT_OK, __LINE__)
    call expect(ckpt_load_buffer(p // c_null_char, c_loc(back), 100_c_size_t, len, step), CKPT_ERR_BUFFER_TOO_SMALL, &
                __LINE__)
    call expect(ckpt_load_buffer(p // c_null_char, c_loc(back), c_sizeof(back), len, step), CKPT_OK, __LINE__)
    call check(len == 5000 .and. step == 3 .and. all(back == data), __LINE__)
    call expect(ckpt_load_buffer(p // c_null_char, c_loc(back), c_sizeof(back), len), CKPT_OK, __LINE__)
    ! the wrappers, with a rank-2 array
    grid = reshape([(i * 0.25_c_double, i = 1, 200)], [10, 20])
    call expect(ckpt_save_buffer_f(path_in("grid.bin"), grid, 9_c_int64_t), CKPT_OK, __LINE__)
    grid_back = 0
    step = 0
    call expect(ckpt_load_buffer_f(path_in("grid.bin"), grid_back, len, step), CKPT_OK, __LINE__)
    call check(len == 1600 .and. step == 9 .and. all(grid_back == grid), __LINE__)
    call expect(ckpt_load_buffer_f(path_in("grid.bin"), grid_back(1:5, 1:2), len), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_load_buffer_f(path_in("grid.bin"), grid_back(:, 1:2), len), CKPT_ERR_BUFFER_TOO_SMALL, __LINE__)
    call expect(ckpt_load_buffer_f(path_in("missing.bin"), back, len, step), CKPT_ERR_NOT_FOUND, __LINE__)
    call check(index(ckpt_last_error_f(), "missing.bin") > 0, __LINE__)
    call expect(ckpt_buffer_size_f("", len), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    ! damage: every CRC is verified
    open(newunit=u, file=p, access='stream', form='unformatted', action='readwrite', status='old')
    write(u, pos=4096 + 100 + 1) achar(0), achar(1)
    close(u)
    call expect(ckpt_load_buffer_f(p, back, len, step), CKPT_ERR_CORRUPT, __LINE__)
    call check(index(ckpt_last_error_f(), "state.bin") > 0 .and. index(ckpt_last_error_f(), "buffer") > 0, __LINE__)
  end subroutine buffers
  ! Regions by name (ckpt_protect_named_f and the raw bind(C) interfaces), mixed with one by number: a
  ! restart reads each by its name in any order; a name the checkpoint lacks, or another size, is refused
  ! with a message naming the region, and nothing is written.
  subroutine named_regions()
    real(c_double), target :: e(8), p(8), q(8)
    integer(c_int64_t), target :: cycle
    integer(c_int64_t) :: step
    integer(c_size_t) :: len
    integer :: i
    call expect(ckpt_set_config_f("CKPT_DIR", path_in("named")), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("named"), CKPT_OK, __LINE__)
    call expect(ckpt_protect_named_f("", e), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_protect_named_f("region.2", e), CKPT_ERR_INVALID_ARGUMENT, __LINE__)
    call expect(ckpt_protect_named_f("e", e(1:8:2)), CKPT_ERR_INVALID_ARGUMENT, __LINE__) ! not contiguous
    call expect(ckpt_unprotect_named_f("e"), CKPT_ERR_UNKNOWN_REGION, __LINE__)
    call check(index(ckpt_last_error_f(), 'region "e" is not protected') > 0, __LINE__)
    len = 7
    call expect(ckpt_restart_size_named_f("e", len), CKPT_ERR_NO_CHECKPOINT, __LINE__)
    call check(len == 7, __LINE__)
    e = [(1.0_c_double * i, i = 1, 8)]
    p = [(100.0_c_double + i, i = 1, 8)]
    cycle = 5
    call expect(ckpt_protect_f(0, cycle), CKPT_OK, __LINE__)
    call expect(ckpt_protect_named_f("e", e), CKPT_OK, __LINE__)
    call expect(ckpt_protect_named("p" // c_null_char, c_loc(p), c_sizeof(p)), CKPT_OK, __LINE__) ! same size
    call expect(ckpt_checkpoint(5_c_int64_t), CKPT_OK, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)

    ! another order: each array gets its own values
    call expect(ckpt_init_f("named"), CKPT_OK, __LINE__)
    e = -1
    p = -1
    q = -1
    cycle = -1
    call expect(ckpt_protect_named_f("p", p), CKPT_OK, __LINE__)
    call expect(ckpt_protect_named_f("e", e), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(0, cycle), CKPT_OK, __LINE__)
    call expect(ckpt_restart_size_named_f("p", len), CKPT_OK, __LINE__)
    call check(len == c_sizeof(p), __LINE__)
    step = -1
    call expect(ckpt_restart(step), CKPT_OK, __LINE__)
    call check(step == 5 .and. cycle == 5 .and. e(1) == 1 .and. e(8) == 8 .and. p(1) == 101 .and. p(8) == 108, __LINE__)

    ! a field inserted between two others, of the same size: refused, naming it; nothing written
    e = -1
    p = -1
    cycle = -1
    step = -1
    call expect(ckpt_protect_named_f("q", q), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_ERR_SECTION_NOT_FOUND, __LINE__)
    call check(index(ckpt_last_error_f(), 'region "q" is not in this checkpoint') > 0, __LINE__)
    call check(step == -1 .and. cycle == -1 .and. e(1) == -1 .and. p(1) == -1 .and. q(1) == -1, __LINE__)
    len = 7
    call expect(ckpt_restart_size_named_f("q", len), CKPT_ERR_SECTION_NOT_FOUND, __LINE__)
    call check(len == 7, __LINE__)
    call expect(ckpt_unprotect_named("q" // c_null_char), CKPT_OK, __LINE__)

    ! another size: refused, naming the region
    call expect(ckpt_protect_named_f("e", e(1:4)), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_ERR_SIZE_MISMATCH, __LINE__)
    call check(index(ckpt_last_error_f(), 'region "e" holds 32 bytes') > 0, __LINE__)
    call expect(ckpt_protect_named_f("e", e), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_OK, __LINE__)
    call check(step == 5 .and. e(4) == 4 .and. p(4) == 104 .and. cycle == 5, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
    call expect(ckpt_set_config_f("CKPT_DIR", dir), CKPT_OK, __LINE__)
  end subroutine named_regions

  ! ckpt_checkpoint_async copies the regions and returns; ckpt_checkpoint_wait waits for the checkpoint.
  subroutine async_checkpoints()
    real(c_double), target :: a(1024)
    integer(c_int64_t), target :: cycle
    integer(c_int64_t) :: step
    integer :: i
    call expect(ckpt_set_config_f("CKPT_DIR", path_in("async")), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("async"), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(0, cycle), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(1, a), CKPT_OK, __LINE__)
    call expect(ckpt_checkpoint_wait(), CKPT_OK, __LINE__)
    cycle = 3
    a = [(3.0_c_double * i, i = 1, 1024)]
    call expect(ckpt_checkpoint_async(3_c_int64_t), CKPT_OK, __LINE__)
    cycle = -1
    a = -1
    call expect(ckpt_checkpoint_wait(), CKPT_OK, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
    call expect(ckpt_init_f("async"), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(0, cycle), CKPT_OK, __LINE__)
    call expect(ckpt_protect_f(1, a), CKPT_OK, __LINE__)
    call expect(ckpt_restart(step), CKPT_OK, __LINE__)
    call check(step == 3 .and. cycle == 3 .and. a(1024) == 3072.0_c_double, __LINE__)
    call expect(ckpt_finalize(), CKPT_OK, __LINE__)
  end subroutine async_checkpoints
end module checks

program test_api
  use checks
  implicit none
  if (command_argument_count() /= 1) then
    write(0, '(a)') 'usage: test_api DIR'
    stop 2
  end if
  call get_command_argument(1, dir)
  call constants()
  call before_init()
  call first_run()
  call restart_run()
  call restart_info()
  call damaged()
  call multi_rank_protocol()
  call buffers()
  call named_regions()
  call async_checkpoints()
  if (failures > 0) then
    write(0, '(i0,a)') failures, ' check(s) failed'
    error stop 1
  end if
  write(*, '(a)') 'all Fortran API checks passed'
end program test_api
