!> ckpt_mpi.f90: collective checkpoint/restart for MPI programs in Fortran (the counterpart of ckpt_mpi.h),
!> written in Fortran on top of module ckpt (include/ckpt.f90) and the MPI-3 module mpi_f08.
!>
!> Build with the MPI Fortran wrapper of the MPI library the program uses (a .mod file is specific to the
!> compiler and to that MPI's mpi_f08):
!>     mpif90 -c $PREFIX/include/ckpt.f90 $PREFIX/include/ckpt_mpi.f90
!>     mpif90 app.f90 ckpt.o ckpt_mpi.o -L$PREFIX/lib -lckpt -Wl,-rpath,$PREFIX/lib
!> Codes that `use mpi` (integer handles) convert: type(MPI_Comm) :: c; c%MPI_VAL = comm.
!>
!> Rules for every ckpt_mpi_* function (as in C):
!>  - COLLECTIVE over comm: every rank calls it, in the same order relative to other collectives on comm;
!>    use the same communicator for every call (rank 0 of it commits steps).
!>  - Returns the SAME integer(c_int32_t) on every rank: CKPT_OK, 1/0 for the predicates, or a negative
!>    CKPT_ERR_* code (the failing rank's; ckpt_last_error_f() has the message on that rank only).
!>    CKPT_ERR_MPI also reports a failed MPI call (only possible when comm's error handler returns).
!>  - Out-arguments are written only on success, alike on every rank.
!>  - Call from one thread per process, like any MPI collective.
module ckpt_mpi
  use, intrinsic :: iso_c_binding, only: c_int32_t, c_int64_t, c_size_t
  use mpi_f08
  use ckpt
  implicit none
  private
  public :: ckpt_mpi_init, ckpt_mpi_finalize, ckpt_mpi_poll, ckpt_mpi_should_checkpoint, ckpt_mpi_should_exit, &
            ckpt_mpi_checkpoint, ckpt_mpi_have_restart, ckpt_mpi_restart, ckpt_mpi_restart_size, &
            ckpt_mpi_checkpoint_async, ckpt_mpi_checkpoint_wait

  ! The checkpoint ckpt_mpi_checkpoint_async started, for ckpt_mpi_checkpoint_wait.
  logical, save :: in_flight = .false., in_flight_cached = .false.
  integer, save :: in_flight_rank = 0, in_flight_nranks = 1
  integer(c_int64_t), save :: in_flight_generation = 0, in_flight_step = 0
  integer(c_int32_t), save :: in_flight_status = 0
  integer(c_int64_t), allocatable, save :: in_flight_reports(:, :)
  type(ckpt_part_identity), allocatable, save :: in_flight_parts(:)

contains

  !> MIN (op = MPI_MIN) or MAX over comm of v, in place. CKPT_OK or CKPT_ERR_MPI.
  function reduce64(comm, v, op) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int64_t), intent(inout) :: v(:)
    type(MPI_Op), intent(in) :: op
    integer(c_int32_t) :: status
    integer :: ierr
    call MPI_Allreduce(MPI_IN_PLACE, v, size(v), MPI_INT64_T, op, comm, ierr)
    status = merge(CKPT_OK, CKPT_ERR_MPI, ierr == MPI_SUCCESS)
  end function reduce64

  !> The most negative status over comm (CKPT_OK when every rank succeeded).
  function agree_status(comm, local) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(in) :: local
    integer(c_int32_t) :: status
    integer(c_int64_t) :: v(1)
    v(1) = local
    status = reduce64(comm, v, MPI_MIN)
    if (status == CKPT_OK) status = int(v(1), c_int32_t)
  end function agree_status

  !> Sets the rank and the number of ranks from comm (ckpt_set_rank), then ckpt_init(name) on every rank
  !> (name absent: the default). All or nothing: if ckpt_init fails on any rank, the others finalize again
  !> and every rank returns the failing code. CKPT_ERR_INVALID_STATE when MPI is not initialised.
  function ckpt_mpi_init(comm, name) result(status)
    type(MPI_Comm), intent(in) :: comm
    character(len=*), intent(in), optional :: name
    integer(c_int32_t) :: status, rc, ignored
    integer :: rank, nranks, ierr
    logical :: initialized
    call MPI_Initialized(initialized, ierr)
    if (ierr /= MPI_SUCCESS .or. .not. initialized) then
      status = CKPT_ERR_INVALID_STATE
      return
    end if
    call MPI_Comm_rank(comm, rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    rc = ckpt_set_rank(int(rank, c_int32_t), int(nranks, c_int32_t))
    if (rc == CKPT_OK) rc = ckpt_init_f(name)
    status = agree_status(comm, rc)
    if (status /= CKPT_OK .and. rc == CKPT_OK) ignored = ckpt_finalize()
  end function ckpt_mpi_init

  !> ckpt_finalize on every rank, with an agreed status. Call before MPI_Finalize.
  function ckpt_mpi_finalize(comm) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t) :: status
    status = agree_status(comm, ckpt_finalize())
  end function ckpt_mpi_finalize

  !> One allreduce (MAX) of both flags: want_checkpoint = 1 when a checkpoint is due on any rank,
  !> want_exit = 1 when any rank's last checkpoint was asked to be the last. Both optional.
  function ckpt_mpi_poll(comm, want_checkpoint, want_exit) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(inout), optional :: want_checkpoint, want_exit
    integer(c_int32_t) :: status
    integer(c_int64_t) :: v(2)
    v = [int(ckpt_should_checkpoint(), c_int64_t), int(ckpt_should_exit(), c_int64_t)]
    status = reduce64(comm, v, MPI_MAX)
    if (status /= CKPT_OK) return
    if (present(want_checkpoint)) want_checkpoint = int(v(1), c_int32_t)
    if (present(want_exit)) want_exit = int(v(2), c_int32_t)
  end function ckpt_mpi_poll

  !> 1 on every rank when a checkpoint is due on ANY rank (MAX of ckpt_should_checkpoint), else 0;
  !> CKPT_ERR_MPI if the allreduce failed. One small allreduce per call.
  function ckpt_mpi_should_checkpoint(comm) result(flag)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t) :: flag, c
    c = 0
    flag = ckpt_mpi_poll(comm, want_checkpoint=c)
    if (flag == CKPT_OK) flag = c
  end function ckpt_mpi_should_checkpoint

  !> 1 on every rank when any rank should stop (MAX of ckpt_should_exit), else 0. Ask it right after
  !> ckpt_mpi_checkpoint returned CKPT_OK: a rank's flag is set once its own part is durable, so after a
  !> failed collective checkpoint it may say 1. With a node-local cache level (CKPT_CACHE_DIR) the flag is
  !> set only once the step is copied to the checkpoint directory, in the background, a few iterations
  !> later: ask in every iteration too (ckpt_mpi_poll gives both flags with one allreduce), as
  !> examples/fortran/heat_mpi.f90 does.
  function ckpt_mpi_should_exit(comm) result(flag)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t) :: flag, e
    e = 0
    flag = ckpt_mpi_poll(comm, want_exit=e)
    if (flag == CKPT_OK) flag = e
  end function ckpt_mpi_should_exit

  !> Writes every rank's protected regions as step `step` and commits the step only after every rank's
  !> part is durable: agree on the generation (MAX of ckpt_next_generation), each rank writes its part
  !> (ckpt_checkpoint_part), an MPI_Gather brings every rank's status and part identity to rank 0 (also the
  !> barrier), rank 0 commits from the identities (ckpt_commit_step_parts: no file opened per rank) unless
  !> a part failed, and broadcasts the result; every rank then calls ckpt_finish_step with it (a committed
  !> step lets each rank remove its own parts that fell out of CKPT_KEEP). With one rank it is
  !> ckpt_checkpoint(step). `step` must be the same on every rank. A failed part or commit leaves the
  !> requests due again (the next poll retries everywhere). CKPT_ERR_OTHER when rank 0 cannot allocate the
  !> gather buffer (nothing is written then).
  function ckpt_mpi_checkpoint(comm, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int64_t), intent(in) :: step
    integer(c_int32_t) :: status
    integer(c_int64_t) :: g
    integer(c_int64_t), allocatable :: reports(:, :)
    type(ckpt_part_identity), allocatable :: parts(:)
    integer :: rank, nranks
    logical :: cached
    status = agree_generation(comm, rank, nranks, reports, parts, g, cached)
    if (status /= CKPT_OK .or. nranks == 1) then
      if (status == CKPT_OK) status = ckpt_checkpoint(step)
      return
    end if
    status = conclude(comm, rank, nranks, reports, parts, g, step, ckpt_checkpoint_part(g, step), cached)
  end function ckpt_mpi_checkpoint

  !> ckpt_mpi_checkpoint in two halves, so the program computes while the parts are written: this call
  !> agrees on the generation and starts this rank's part in the background (ckpt_checkpoint_part_async:
  !> the protected regions are copied before it returns, so they may change right after);
  !> ckpt_mpi_checkpoint_wait waits for every rank's part and commits the step. With one rank:
  !> ckpt_checkpoint_async. Every rank must call ckpt_mpi_checkpoint_wait afterwards, even where this call
  !> failed (its failure then fails the step on every rank). A call while one is in flight waits for it
  !> first (collective). Collective.
  function ckpt_mpi_checkpoint_async(comm, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int64_t), intent(in) :: step
    integer(c_int32_t) :: status
    integer :: rank, nranks
    if (in_flight) then
      status = ckpt_mpi_checkpoint_wait(comm)
      if (status /= CKPT_OK) return
    end if
    status = agree_generation(comm, rank, nranks, in_flight_reports, in_flight_parts, in_flight_generation, &
                              in_flight_cached)
    if (status /= CKPT_OK .or. nranks == 1) then
      if (status == CKPT_OK) status = ckpt_checkpoint_async(step)
      return
    end if
    status = ckpt_checkpoint_part_async(in_flight_generation, step)
    in_flight = .true.
    in_flight_rank = rank
    in_flight_nranks = nranks
    in_flight_step = step
    in_flight_status = status
  end function ckpt_mpi_checkpoint_async

  !> Waits for the checkpoint ckpt_mpi_checkpoint_async started and commits the step when every rank's
  !> part is durable: the same status on every rank, as ckpt_mpi_checkpoint returns. CKPT_OK when none is
  !> in flight. Collective.
  function ckpt_mpi_checkpoint_wait(comm) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t) :: status, rc
    integer :: nranks, ierr
    call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    if (nranks == 1) then
      status = ckpt_checkpoint_wait()
      return
    end if
    status = CKPT_OK
    if (.not. in_flight) return
    in_flight = .false.
    rc = in_flight_status
    if (rc == CKPT_OK) rc = ckpt_checkpoint_wait()
    status = conclude(comm, in_flight_rank, in_flight_nranks, in_flight_reports, in_flight_parts, &
                      in_flight_generation, in_flight_step, rc, in_flight_cached)
  end function ckpt_mpi_checkpoint_wait

  !> Step 1 of ckpt_mpi_checkpoint: rank and size, rank 0's gather buffers (allocated first: if rank 0
  !> cannot have them, no rank writes anything) and the agreed generation (MAX of ckpt_next_generation).
  !> With one rank only rank and size are set.
  function agree_generation(comm, rank, nranks, reports, parts, g, cached) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(out) :: rank, nranks
    integer(c_int64_t), allocatable, intent(inout) :: reports(:, :)
    type(ckpt_part_identity), allocatable, intent(inout) :: parts(:)
    integer(c_int64_t), intent(out) :: g
    logical, intent(out) :: cached
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: v(3), w(1)
    integer :: ierr, alloc_err, n
    g = 0
    cached = .false.
    call MPI_Comm_rank(comm, rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    status = CKPT_OK
    if (nranks == 1) return
    rc = ckpt_next_generation(g)
    ! {generation, -status, caches}: one MAX gives the agreed generation, the worst failure and whether any
    ! rank has a node-local cache level (then every rank records committed steps in its node's cache)
    v = [merge(g, 0_c_int64_t, rc == CKPT_OK), -int(rc, c_int64_t), int(ckpt_has_cache_level(), c_int64_t)]
    status = reduce64(comm, v, MPI_MAX)
    if (status /= CKPT_OK) return
    if (v(2) /= 0) then
      status = int(-v(2), c_int32_t)
      return
    end if
    g = v(1)
    cached = v(3) /= 0
    ! Each report is the part's identity (5 words) and the rank's status: rank 0's gather buffer, and with
    ! a cache level every rank's buffer for the committed identities. A rank that cannot have its buffers:
    ! no rank writes anything.
    if (allocated(reports)) deallocate(reports)
    if (allocated(parts)) deallocate(parts)
    n = merge(nranks, 1, rank == 0 .or. cached)
    allocate(reports(6, n), parts(n), stat=alloc_err)
    w(1) = merge(0_c_int64_t, -int(CKPT_ERR_OTHER, c_int64_t), alloc_err == 0)
    status = reduce64(comm, w, MPI_MAX)
    if (status == CKPT_OK .and. w(1) /= 0) status = int(-w(1), c_int32_t)
  end function agree_generation

  !> Steps 3-5 of ckpt_mpi_checkpoint for this rank's part of generation g (rc: how writing it went):
  !> gather, commit on rank 0, broadcast, ckpt_finish_step.
  function conclude(comm, rank, nranks, reports, parts, g, step, rc_in, cached) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: rank, nranks
    integer(c_int64_t), allocatable, intent(inout) :: reports(:, :)
    type(ckpt_part_identity), allocatable, intent(inout) :: parts(:)
    integer(c_int64_t), intent(in) :: g, step
    integer(c_int32_t), intent(in) :: rc_in
    logical, intent(in) :: cached
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: mine(6)
    type(ckpt_part_identity) :: identity
    integer(c_int32_t) :: committed(1)
    integer :: ierr, r
    rc = rc_in
    if (rc == CKPT_OK) rc = ckpt_get_part_identity(g, identity)
    mine(1:5) = transfer(identity, mine(1:5))
    mine(6) = rc
    call MPI_Gather(mine, 6, MPI_INT64_T, reports, 6, MPI_INT64_T, 0, comm, ierr)
    committed(1) = merge(CKPT_OK, CKPT_ERR_MPI, ierr == MPI_SUCCESS)
    if (rank == 0 .and. committed(1) == CKPT_OK) then
      committed(1) = int(min(0_c_int64_t, minval(reports(6, :))), c_int32_t) ! the most negative status
      if (committed(1) == CKPT_OK) then
        do r = 1, nranks
          parts(r) = transfer(reports(1:5, r), parts(r))
        end do
        committed(1) = ckpt_commit_step_parts(g, step, parts, int(nranks, c_size_t))
      end if
    end if
    call MPI_Bcast(committed, 1, MPI_INT32_T, 0, comm, ierr)
    status = merge(committed(1), CKPT_ERR_MPI, ierr == MPI_SUCCESS)
    if (cached .and. status == CKPT_OK) then
      ! rank 0's identities (reports(1:5, r)) to every rank, which records the step in its node's cache
      call MPI_Bcast(reports, 6 * nranks, MPI_INT64_T, 0, comm, ierr)
      if (ierr == MPI_SUCCESS .and. rank /= 0) then
        do r = 1, nranks
          parts(r) = transfer(reports(1:5, r), parts(r))
        end do
        rc = ckpt_record_step_parts(g, step, parts, int(nranks, c_size_t)) ! best effort: the step is committed
      end if
    end if
    if (allocated(reports)) deallocate(reports)
    if (allocated(parts)) deallocate(parts)
    ierr = ckpt_finish_step(merge(1_c_int32_t, 0_c_int32_t, status == CKPT_OK))
  end function conclude

  !> Agree on the newest generation <= max_generation that EVERY rank can read (MIN over ranks of each
  !> one's newest valid generation, never the MAX) and select it on every rank; when a rank cannot select
  !> it, all fall back together to older ones. generation = 0: nothing in common.
  function agree(comm, max_generation, generation, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int64_t), intent(in) :: max_generation
    integer(c_int64_t), intent(out) :: generation, step
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: limit, g, v(2), s(3), my_step
    logical :: ok
    limit = max_generation
    generation = 0
    step = 0
    do
      g = 0
      rc = ckpt_newest_valid_generation(limit, g)
      v = [merge(g, 0_c_int64_t, rc == CKPT_OK), int(rc, c_int64_t)]
      status = reduce64(comm, v, MPI_MIN)
      if (status /= CKPT_OK) return
      if (v(2) /= CKPT_OK) then
        status = int(v(2), c_int32_t)
        return
      end if
      if (v(1) == 0) return ! nothing common: generation = 0
      my_step = 0
      ok = ckpt_select_generation(v(1), my_step) == CKPT_OK
      ! one MIN over {selected, step, -step}: did every rank select it, and do the steps agree
      if (ok) then
        s = [1_c_int64_t, my_step, -my_step]
      else
        s = [0_c_int64_t, huge(0_c_int64_t), huge(0_c_int64_t)]
      end if
      status = reduce64(comm, s, MPI_MIN)
      if (status /= CKPT_OK) return
      if (s(1) == 1) then
        if (s(2) /= -s(3)) then
          status = CKPT_ERR_CORRUPT ! one generation, two steps: not one job's files
          return
        end if
        generation = v(1)
        step = my_step
        return
      end if
      limit = v(1) - 1 ! some rank cannot read it: fall back together
    end do
  end function agree

  !> Nothing in common: a fresh start only when no rank could restart even on its own (no files, or
  !> CKPT_ALLOW_FRESH_START); else the error of ckpt_have_restart, or CKPT_ERR_NO_VALID_CHECKPOINT.
  function nothing_common(comm, found) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(inout) :: found
    integer(c_int32_t) :: status, rc, local_found
    integer(c_int64_t) :: v(2)
    local_found = 0
    rc = ckpt_have_restart(local_found)
    v = [int(rc, c_int64_t), merge(-1_c_int64_t, 0_c_int64_t, rc == CKPT_OK .and. local_found /= 0)]
    status = reduce64(comm, v, MPI_MIN)
    if (status /= CKPT_OK) return
    if (v(1) /= CKPT_OK) then
      status = int(v(1), c_int32_t)
    else if (v(2) /= 0) then
      status = CKPT_ERR_NO_VALID_CHECKPOINT
    else
      found = 0
    end if
  end function nothing_common

  !> Agrees on the checkpoint the ranks will restart from and selects it on every rank, without reading
  !> the regions (then the local ckpt_restart_size, or ckpt_mpi_restart_size, gives the sizes to allocate).
  !> found = 1/0, step (optional) its step. CKPT_ERR_NO_VALID_CHECKPOINT when checkpoints exist but no
  !> generation is readable on every rank (never a silent fresh start).
  function ckpt_mpi_have_restart(comm, found, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(inout) :: found
    integer(c_int64_t), intent(inout), optional :: step
    integer(c_int32_t) :: status
    integer(c_int64_t) :: g, s
    status = agree(comm, huge(0_c_int64_t), g, s)
    if (status /= CKPT_OK) return
    if (g == 0) then
      status = nothing_common(comm, found)
      return
    end if
    found = 1
    if (present(step)) step = s
  end function ckpt_mpi_have_restart

  !> Restarts every rank from the same step: the newest generation every rank can read (MIN over ranks),
  !> ckpt_restart on every rank, and if ANY rank fails to read, all fall back together to the next older
  !> common generation. found = 1 (restarted) or 0 (fresh start, regions untouched), step (optional).
  !> Failures an older checkpoint cannot cure (CKPT_ERR_SIZE_MISMATCH, CKPT_ERR_SECTION_NOT_FOUND, ...)
  !> are returned at once on every rank.
  function ckpt_mpi_restart(comm, found, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(inout) :: found
    integer(c_int64_t), intent(inout), optional :: step
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: limit, g, s, got, v(2)
    limit = huge(0_c_int64_t)
    do
      status = agree(comm, limit, g, s)
      if (status /= CKPT_OK) return
      if (g == 0) then
        status = nothing_common(comm, found)
        return
      end if
      got = 0
      rc = ckpt_restart(got)
      ! {class, status}: 1 = read, 0 = unreadable (fall back), -1 = the caller's error (stop)
      if (rc == CKPT_OK) then
        v(1) = 1
      else if (caller_error(rc)) then
        v(1) = -1
      else
        v(1) = 0
      end if
      v(2) = rc
      status = reduce64(comm, v, MPI_MIN)
      if (status /= CKPT_OK) return
      if (v(1) == 1) then
        found = 1
        if (present(step)) step = s
        return
      end if
      if (v(1) < 0) then
        status = int(v(2), c_int32_t)
        return
      end if
      limit = g - 1
    end do
  end function ckpt_mpi_restart

  !> Failures of ckpt_restart that an older generation cannot cure.
  logical function caller_error(rc)
    integer(c_int32_t), intent(in) :: rc
    select case (rc)
    case (CKPT_ERR_SIZE_MISMATCH, CKPT_ERR_SECTION_NOT_FOUND, CKPT_ERR_NULL_ARGUMENT, CKPT_ERR_NOT_INITIALIZED, &
          CKPT_ERR_UNKNOWN_REGION, CKPT_ERR_INVALID_ARGUMENT, CKPT_ERR_INVALID_STATE, CKPT_ERR_PANIC)
      caller_error = .true.
    case default
      caller_error = .false.
    end select
  end function caller_error

  !> This rank's stored size in bytes of region id in the generation selected by ckpt_mpi_have_restart
  !> (call that first): the local ckpt_restart_size behind a collective status.
  function ckpt_mpi_restart_size(comm, id, nbytes) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(in) :: id
    integer(c_size_t), intent(inout) :: nbytes
    integer(c_int32_t) :: status
    integer(c_size_t) :: n
    n = 0
    status = agree_status(comm, ckpt_restart_size(id, n))
    if (status == CKPT_OK) nbytes = n
  end function ckpt_mpi_restart_size

end module ckpt_mpi
