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
!>
!> Partner copies (CKPT_PARTNER=1 with CKPT_CACHE_DIR), as in ckpt_mpi.h and with the same messages: each
!> rank's committed part is also kept in the node-local cache of a rank on the next node, and a restart gets
!> a part its node lost back from there before the ranks agree. Nodes are told apart by ckpt_node_key,
!> ordered by their lowest rank; rank r, the j-th rank of its node, keeps its copy on the next node's
!> (j mod n)-th rank, n being the number of ranks there. With one node there is no partner.
module ckpt_mpi
  use, intrinsic :: iso_c_binding, only: c_int8_t, c_int32_t, c_int64_t, c_size_t, c_loc, c_sizeof
  use, intrinsic :: iso_fortran_env, only: error_unit
  use mpi_f08
  use ckpt
  implicit none
  private
  public :: ckpt_mpi_init, ckpt_mpi_finalize, ckpt_mpi_poll, ckpt_mpi_should_checkpoint, ckpt_mpi_should_exit, &
            ckpt_mpi_checkpoint, ckpt_mpi_have_restart, ckpt_mpi_restart, ckpt_mpi_restart_size, &
            ckpt_mpi_checkpoint_async, ckpt_mpi_checkpoint_wait

  ! The checkpoint ckpt_mpi_checkpoint_async started, for ckpt_mpi_checkpoint_wait.
  logical, save :: in_flight = .false., in_flight_cached = .false., in_flight_partners = .false.
  integer, save :: in_flight_rank = 0, in_flight_nranks = 1
  integer(c_int64_t), save :: in_flight_generation = 0, in_flight_step = 0
  integer(c_int32_t), save :: in_flight_status = 0
  integer(c_int64_t), allocatable, save :: in_flight_reports(:, :)
  type(ckpt_part_identity), allocatable, save :: in_flight_parts(:)

  ! Each rank's partner (the rank keeping its copy, -1 with one node), at index rank + 1: computed once from
  ! every rank's node key (one MPI_Allgather of 8 bytes per rank); freed by ckpt_mpi_finalize.
  integer, allocatable, save :: partner_holder(:)
  ! Bytes per message of a part moved between partners; the message tags of partner transfers (those of
  ! ckpt_mpi.h; below 32767, the least MPI_TAG_UB MPI allows).
  integer(c_int64_t), parameter :: CHUNK = 4194304_c_int64_t
  integer, parameter :: TAG_IDENTITY = 27101, TAG_BYTES = 27102

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
    if (allocated(partner_holder)) deallocate(partner_holder)
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
    logical :: cached, partners
    status = agree_generation(comm, rank, nranks, reports, parts, g, cached, partners)
    if (status /= CKPT_OK .or. nranks == 1) then
      if (status == CKPT_OK) status = ckpt_checkpoint(step)
      return
    end if
    status = conclude(comm, rank, nranks, reports, parts, g, step, ckpt_checkpoint_part(g, step), cached, partners)
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
                              in_flight_cached, in_flight_partners)
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
                      in_flight_generation, in_flight_step, rc, in_flight_cached, in_flight_partners)
  end function ckpt_mpi_checkpoint_wait

  !> Step 1 of ckpt_mpi_checkpoint: rank and size, rank 0's gather buffers (allocated first: if rank 0
  !> cannot have them, no rank writes anything), the agreed generation (MAX of ckpt_next_generation),
  !> whether any rank caches (cached) and keeps partner copies (partners). With one rank only rank and size
  !> are set.
  function agree_generation(comm, rank, nranks, reports, parts, g, cached, partners) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(out) :: rank, nranks
    integer(c_int64_t), allocatable, intent(inout) :: reports(:, :)
    type(ckpt_part_identity), allocatable, intent(inout) :: parts(:)
    integer(c_int64_t), intent(out) :: g
    logical, intent(out) :: cached, partners
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: v(4), w(1)
    integer :: ierr, alloc_err, n
    g = 0
    cached = .false.
    partners = .false.
    call MPI_Comm_rank(comm, rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    status = CKPT_OK
    if (nranks == 1) return
    rc = ckpt_next_generation(g)
    ! {generation, -status, caches, partners}: one MAX gives the agreed generation, the worst failure and
    ! whether any rank has a node-local cache level (then every rank records committed steps in its node's
    ! cache) and keeps partner copies (then every rank's part is also kept on its partner's node)
    v = [merge(g, 0_c_int64_t, rc == CKPT_OK), -int(rc, c_int64_t), int(ckpt_has_cache_level(), c_int64_t), &
         int(ckpt_has_partner_copies(), c_int64_t)]
    status = reduce64(comm, v, MPI_MAX)
    if (status /= CKPT_OK) return
    if (v(2) /= 0) then
      status = int(-v(2), c_int32_t)
      return
    end if
    g = v(1)
    cached = v(3) /= 0
    partners = v(4) /= 0
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
  !> gather, commit on rank 0, broadcast, ckpt_finish_step. With a cache level every rank records the
  !> committed step in its node's cache; with partner copies each rank's part is then also kept on its
  !> partner's node (partner_send).
  function conclude(comm, rank, nranks, reports, parts, g, step, rc_in, cached, partners) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: rank, nranks
    integer(c_int64_t), allocatable, intent(inout) :: reports(:, :)
    type(ckpt_part_identity), allocatable, intent(inout) :: parts(:)
    integer(c_int64_t), intent(in) :: g, step
    integer(c_int32_t), intent(in) :: rc_in
    logical, intent(in) :: cached, partners
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
    if (partners .and. status == CKPT_OK) call partner_send(comm, rank, nranks, g, identity)
    ierr = ckpt_finish_step(merge(1_c_int32_t, 0_c_int32_t, status == CKPT_OK))
  end function conclude

  ! ---- Partner copies (CKPT_PARTNER=1 with CKPT_CACHE_DIR): the protocol of ckpt_mpi.h ----

  !> The partner of every rank in partner_holder (computed at the first call): ranks with the same
  !> ckpt_node_key share a node, nodes are ordered by their lowest rank, and the j-th rank of a node (in
  !> ascending order) keeps its copy on the next node's (j mod n)-th rank, n being the number of ranks
  !> there; -1 with one node. The same status on every rank. Collective.
  function partner_layout(comm, nranks) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: nranks
    integer(c_int32_t) :: status
    integer(c_int64_t) :: key
    integer(c_int64_t), allocatable :: keys(:)
    ! order: the ranks sorted by (node key, rank); group_of, place: each rank's node and its index j there;
    ! first, members: each node's first position in order and its number of ranks; ordinal, by_lowest:
    ! the nodes' places when ordered by their lowest rank, and the nodes in that order
    integer, allocatable :: order(:), merged(:), group_of(:), place(:), first(:), members(:), ordinal(:), &
                            by_lowest(:), holder(:)
    integer :: ierr, alloc_err, r, p, i, j, lo, mid, hi, width, ngroups, nseen, next
    logical :: take_left
    if (allocated(partner_holder)) then
      if (size(partner_holder) == nranks) then
        status = CKPT_OK
        return
      end if
    end if
    key = 0
    status = ckpt_node_key(key)
    allocate(keys(nranks), order(nranks), merged(nranks), group_of(nranks), place(nranks), first(nranks), &
             members(nranks), ordinal(nranks), by_lowest(nranks), holder(nranks), stat=alloc_err)
    if (status == CKPT_OK .and. alloc_err /= 0) status = CKPT_ERR_OTHER
    status = agree_status(comm, status)
    if (status /= CKPT_OK .or. alloc_err /= 0) return ! (alloc_err: for gfortran -O2's flow analysis)
    call MPI_Allgather(key, 1, MPI_INT64_T, keys, 1, MPI_INT64_T, comm, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    ! a stable merge sort of the ranks by node key: within a node the ranks stay ascending
    order = [(r, r = 0, nranks - 1)]
    width = 1
    do while (width < nranks)
      lo = 1
      do while (lo <= nranks)
        mid = min(lo + width, nranks + 1)
        hi = min(lo + 2 * width, nranks + 1)
        i = lo
        j = mid
        do p = lo, hi - 1
          take_left = i < mid
          if (take_left .and. j < hi) take_left = keys(order(i) + 1) <= keys(order(j) + 1)
          if (take_left) then
            merged(p) = order(i)
            i = i + 1
          else
            merged(p) = order(j)
            j = j + 1
          end if
        end do
        lo = hi
      end do
      order = merged
      width = 2 * width
    end do
    ngroups = 0
    do p = 1, nranks
      if (p == 1) then
        ngroups = 1
        first(1) = 1
        members(1) = 0
      else if (keys(order(p) + 1) /= keys(order(p - 1) + 1)) then
        ngroups = ngroups + 1
        first(ngroups) = p
        members(ngroups) = 0
      end if
      members(ngroups) = members(ngroups) + 1
      group_of(order(p) + 1) = ngroups
      place(order(p) + 1) = p - first(ngroups)
    end do
    ! the nodes ordered by their lowest rank: in the order the ranks meet them
    ordinal(1:ngroups) = 0
    nseen = 0
    do r = 0, nranks - 1
      if (ordinal(group_of(r + 1)) == 0) then
        nseen = nseen + 1
        ordinal(group_of(r + 1)) = nseen
        by_lowest(nseen) = group_of(r + 1)
      end if
    end do
    do r = 0, nranks - 1
      if (ngroups == 1) then
        holder(r + 1) = -1
      else
        next = by_lowest(mod(ordinal(group_of(r + 1)), ngroups) + 1)
        holder(r + 1) = order(first(next) + mod(place(r + 1), members(next)))
      end if
    end do
    if (ngroups == 1) then
      call MPI_Comm_rank(comm, r, ierr)
      if (ierr == MPI_SUCCESS .and. r == 0) then
        write(error_unit, '(a,i0,a)') 'ckpt: CKPT_PARTNER=1, but all ', nranks, ' ranks are on one node ' // &
          '(CKPT_NODE_ID, SLURM_TOPOLOGY_ADDR or the host name): no partner copies are kept'
        flush(error_unit)
      end if
    end if
    if (allocated(partner_holder)) deallocate(partner_holder)
    call move_alloc(holder, partner_holder)
  end function partner_layout

  !> Reports a partner transfer that failed on this rank (the step itself is committed; only its redundant
  !> copy is missing), on stderr where a batch job's log has it: the line of ckpt_mpi.h.
  subroutine partner_warn(rank, what, other, generation, rc)
    integer, intent(in) :: rank, other
    character(len=*), intent(in) :: what
    integer(c_int64_t), intent(in) :: generation
    integer(c_int32_t), intent(in) :: rc
    character(len=:), allocatable :: why
    if (rc == CKPT_ERR_MPI) then
      why = 'an MPI call failed'
    else
      why = ckpt_last_error_f()
      if (len(why) == 0) why = ckpt_status_str_f(rc)
    end if
    write(error_unit, '(a,i0,a,a,a,i0,a,i0,a,a)') 'ckpt: rank ', rank, ': ', what, ' rank ', other, &
      "'s part of generation ", generation, ' failed: ', why
    flush(error_unit)
  end subroutine partner_warn

  !> After the step of generation g was committed: sends this rank's cached part (identity mine) to its
  !> partner and keeps the parts of the ranks this rank is the partner of, each received in chunks and kept
  !> only once it is exactly the part committed and verifies (ckpt_part_copy_commit). Failures are reported
  !> on stderr, not returned: the step is committed either way. Collective.
  subroutine partner_send(comm, rank, nranks, g, mine)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: rank, nranks
    integer(c_int64_t), intent(in) :: g
    type(ckpt_part_identity), intent(in) :: mine
    type(ckpt_part_identity), asynchronous :: own
    type(ckpt_part_identity), allocatable, asynchronous :: theirs(:)
    integer(c_int8_t), allocatable, target, asynchronous :: outbuf(:), inbuf(:, :)
    integer, allocatable :: from(:)
    integer(c_int32_t), allocatable :: write_rc(:)
    type(MPI_Request), allocatable :: reqs(:)
    integer(c_int32_t) :: rc, read_rc, wrc
    integer(c_int64_t) :: off
    integer :: to, nfrom, slots, i, r, n, nbytes, idbytes, ierr, alloc_err
    if (partner_layout(comm, nranks) /= CKPT_OK) then
      call partner_warn(rank, 'placing a copy of', rank, g, CKPT_ERR_OTHER)
      return
    end if
    to = partner_holder(rank + 1)
    nfrom = count(partner_holder == rank)
    slots = max(nfrom, 1)
    allocate(from(slots), theirs(slots), write_rc(slots), reqs(slots + 1), outbuf(CHUNK), inbuf(CHUNK, slots), &
             stat=alloc_err)
    ! all or none: a rank without buffers could not take its part in the exchange
    rc = merge(CKPT_OK, CKPT_ERR_OTHER, alloc_err == 0)
    if (agree_status(comm, rc) /= CKPT_OK .or. alloc_err /= 0) then ! (alloc_err: for gfortran -O2's flow analysis)
      call partner_warn(rank, 'keeping a copy of', rank, g, CKPT_ERR_OTHER)
      return
    end if
    i = 0
    do r = 0, nranks - 1
      if (partner_holder(r + 1) == rank) then
        i = i + 1
        from(i) = r
      end if
    end do
    write_rc = CKPT_OK
    own = mine
    idbytes = int(c_sizeof(own))
    n = 0
    if (to >= 0) then
      n = n + 1
      call MPI_Isend(own, idbytes, MPI_BYTE, to, TAG_IDENTITY, comm, reqs(n), ierr)
    end if
    do i = 1, nfrom
      n = n + 1
      call MPI_Irecv(theirs(i), idbytes, MPI_BYTE, from(i), TAG_IDENTITY, comm, reqs(n), ierr)
    end do
    call MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE, ierr)
    if (ierr /= MPI_SUCCESS) rc = CKPT_ERR_MPI
    ! chunk by chunk, in lockstep with the partners: every request of a round is posted before its wait, so
    ! a round always completes
    read_rc = CKPT_OK
    off = 0
    do while (rc == CKPT_OK)
      n = 0
      do i = 1, nfrom
        if (off < theirs(i)%file_len) then
          nbytes = int(min(theirs(i)%file_len - off, CHUNK))
          n = n + 1
          call MPI_Irecv(inbuf(1, i), nbytes, MPI_BYTE, from(i), TAG_BYTES, comm, reqs(n), ierr)
        end if
      end do
      if (to >= 0 .and. off < own%file_len) then
        nbytes = int(min(own%file_len - off, CHUNK))
        if (read_rc == CKPT_OK) read_rc = ckpt_part_copy_read(CKPT_PART_OWN, g, int(rank, c_int32_t), off, &
                                                              c_loc(outbuf), int(nbytes, c_size_t))
        if (read_rc /= CKPT_OK) outbuf(1:nbytes) = 0 ! the partner's check refuses it
        n = n + 1
        call MPI_Isend(outbuf, nbytes, MPI_BYTE, to, TAG_BYTES, comm, reqs(n), ierr)
      end if
      if (n == 0) exit
      call MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE, ierr)
      if (ierr /= MPI_SUCCESS) rc = CKPT_ERR_MPI
      do i = 1, nfrom
        if (rc /= CKPT_OK) exit
        if (off < theirs(i)%file_len .and. write_rc(i) == CKPT_OK) then
          nbytes = int(min(theirs(i)%file_len - off, CHUNK))
          write_rc(i) = ckpt_part_copy_write(CKPT_PART_PARTNER, g, int(from(i), c_int32_t), off, c_loc(inbuf(1, i)), &
                                             int(nbytes, c_size_t))
        end if
      end do
      off = off + CHUNK
    end do
    if (read_rc /= CKPT_OK) call partner_warn(rank, 'sending a copy of', rank, g, read_rc)
    do i = 1, nfrom
      wrc = merge(rc, write_rc(i), rc /= CKPT_OK)
      if (wrc == CKPT_OK) wrc = ckpt_part_copy_commit(CKPT_PART_PARTNER, theirs(i))
      if (wrc /= CKPT_OK) call partner_warn(rank, 'keeping a copy of', from(i), g, wrc)
    end do
  end subroutine partner_send

  !> Moves the file_len bytes of a part from rank src (reading copy of rank of's part) to rank dst (receiving
  !> it as its own part), in chunks; on dst the part is kept once it is exactly expected and verifies. Point
  !> to point: only src and dst call it (they may be one rank: a restart placed the rank on the node that
  !> keeps its copy). Returns, on dst, how receiving went.
  function move_part(comm, rank, src, dst, copy, g, of, expected) result(rc)
    type(MPI_Comm), intent(in) :: comm
    integer, intent(in) :: rank, src, dst, of
    integer(c_int32_t), intent(in) :: copy
    integer(c_int64_t), intent(in) :: g
    type(ckpt_part_identity), intent(in) :: expected
    integer(c_int32_t) :: rc
    integer(c_int8_t), allocatable, target :: buf(:)
    integer(c_int8_t) :: byte(1)
    integer(c_int64_t) :: off
    integer :: nbytes, ierr, alloc_err
    byte = 0
    allocate(buf(CHUNK), stat=alloc_err)
    rc = merge(CKPT_OK, CKPT_ERR_OTHER, alloc_err == 0)
    off = 0
    do while (off < expected%file_len)
      nbytes = int(min(expected%file_len - off, CHUNK))
      if (rank == src) then
        if (rc == CKPT_OK) rc = ckpt_part_copy_read(copy, g, int(of, c_int32_t), off, c_loc(buf), int(nbytes, c_size_t))
        if (rc /= CKPT_OK .and. allocated(buf)) buf(1:nbytes) = 0 ! the receiver's check refuses it
      end if
      if (src /= dst .and. rank == src) then
        if (allocated(buf)) then
          call MPI_Send(buf, nbytes, MPI_BYTE, dst, TAG_BYTES, comm, ierr)
        else
          call MPI_Send(byte, 0, MPI_BYTE, dst, TAG_BYTES, comm, ierr)
        end if
        if (ierr /= MPI_SUCCESS) rc = CKPT_ERR_MPI
      end if
      if (src /= dst .and. rank == dst) then
        if (allocated(buf)) then
          call MPI_Recv(buf, nbytes, MPI_BYTE, src, TAG_BYTES, comm, MPI_STATUS_IGNORE, ierr)
        else
          call MPI_Recv(byte, 0, MPI_BYTE, src, TAG_BYTES, comm, MPI_STATUS_IGNORE, ierr)
        end if
        if (ierr /= MPI_SUCCESS) rc = CKPT_ERR_MPI
      end if
      if (rank == dst .and. rc == CKPT_OK) &
        rc = ckpt_part_copy_write(CKPT_PART_OWN, g, int(rank, c_int32_t), off, c_loc(buf), int(nbytes, c_size_t))
      off = off + CHUNK
    end do
    if (rank == dst .and. rc == CKPT_OK) rc = ckpt_part_copy_commit(CKPT_PART_OWN, expected)
    if (rank == src .and. rank /= dst .and. rc /= CKPT_OK) call partner_warn(rank, 'sending back', of, g, rc)
  end function move_part

  !> The restart side. Given this rank's newest readable generation (g, found with status rc), when some
  !> ranks lack the newest generation G that another rank can read, and a node keeps partner copies of their
  !> parts of G (with G's manifest), each such rank gets its part back from there, records the step in its
  !> node's cache, and looks again (rc, g updated). The ranks then agree as usual, falling back together if a
  !> part could not be restored. Collective.
  function partner_restore(comm, rc, g) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int32_t), intent(inout) :: rc
    integer(c_int64_t), intent(inout) :: g
    integer(c_int32_t) :: status, got, moved
    integer(c_int64_t) :: v(3), mine, newest, step
    integer(c_int64_t), allocatable :: vec(:)
    type(ckpt_part_identity), allocatable :: parts(:)
    integer(c_int32_t), allocatable :: held(:)
    integer(c_size_t) :: nheld
    integer :: rank, nranks, ierr, alloc_err, x, keeper, i, idbytes
    call MPI_Comm_rank(comm, rank, ierr)
    if (ierr == MPI_SUCCESS) call MPI_Comm_size(comm, nranks, ierr)
    if (ierr /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    mine = 0
    if (rc == CKPT_OK) mine = g
    if (mine < 0) mine = huge(0_c_int64_t) ! a uint64 beyond INT64_MAX, as in C
    ! {partners, newest, -oldest}: one MAX says whether any rank keeps partner copies and whether the ranks
    ! differ
    v = [int(ckpt_has_partner_copies(), c_int64_t), mine, -mine]
    status = reduce64(comm, v, MPI_MAX)
    if (status /= CKPT_OK) return
    newest = v(2)
    if (v(1) == 0 .or. newest == 0 .or. v(2) == -v(3)) return
    ! vec(r + 1): rank r lacks newest; vec(nranks + r + 1): 1 + a rank whose node keeps r's part of it and
    ! its manifest
    allocate(vec(2 * nranks), parts(nranks), held(nranks), stat=alloc_err)
    status = agree_status(comm, merge(CKPT_OK, CKPT_ERR_OTHER, alloc_err == 0))
    if (status /= CKPT_OK .or. alloc_err /= 0) return ! (alloc_err: for gfortran -O2's flow analysis)
    vec = 0
    step = 0
    nheld = 0
    if (rc == CKPT_OK .and. g < newest) vec(rank + 1) = 1
    ! a rank keeps copies for others only when it can restart from newest itself: the step then passed every
    ! rule of restart discovery there (this run's, verified)
    if (rc == CKPT_OK .and. g == newest) then
      if (ckpt_step_identities(newest, parts, int(nranks, c_size_t), step) == CKPT_OK) then
        if (ckpt_partner_copies_held(newest, held, int(nranks, c_size_t), nheld) == CKPT_OK) then
          do i = 1, int(nheld)
            vec(nranks + held(i) + 1) = int(rank + 1, c_int64_t)
          end do
        end if
      end if
    end if
    status = reduce64(comm, vec, MPI_MAX)
    idbytes = nranks * int(c_sizeof(parts(1)))
    do x = 0, nranks - 1
      if (status /= CKPT_OK) exit
      if (vec(x + 1) == 0) cycle
      keeper = int(vec(nranks + x + 1)) - 1
      if (keeper < 0) then
        if (rank == x) then
          write(error_unit, '(a,i0,a,i0)') 'ckpt: rank ', rank, &
            ': no node keeps a partner copy of its part of generation ', newest
          flush(error_unit)
        end if
        cycle
      end if
      if (rank /= x .and. rank /= keeper) cycle
      ! the step's identities first (the receiver records the step from them), then the part
      if (rank == keeper .and. rank /= x) then
        call MPI_Send(parts, idbytes, MPI_BYTE, x, TAG_IDENTITY, comm, ierr)
        if (ierr /= MPI_SUCCESS) status = CKPT_ERR_MPI
      end if
      if (rank == x .and. rank /= keeper) then
        call MPI_Recv(parts, idbytes, MPI_BYTE, keeper, TAG_IDENTITY, comm, MPI_STATUS_IGNORE, ierr)
        if (ierr /= MPI_SUCCESS) status = CKPT_ERR_MPI
      end if
      if (status /= CKPT_OK) exit
      got = CKPT_OK
      if (rank == x) got = ckpt_record_step_parts(newest, parts(x + 1)%step, parts, int(nranks, c_size_t))
      moved = move_part(comm, rank, keeper, x, CKPT_PART_PARTNER, newest, x, parts(x + 1))
      if (rank /= x) cycle
      if (got == CKPT_OK) got = moved
      if (got == CKPT_OK) then
        write(error_unit, '(a,i0,a,i0,a,i0,a)') 'ckpt: rank ', rank, ': its part of generation ', newest, &
          ' restored from the copy on rank ', keeper, "'s node"
        flush(error_unit)
        rc = ckpt_newest_valid_generation(huge(0_c_int64_t), g)
      else
        call partner_warn(rank, 'restoring', rank, newest, got)
      end if
    end do
  end function partner_restore

  !> Agree on the newest generation <= max_generation that EVERY rank can read (MIN over ranks of each
  !> one's newest valid generation, never the MAX) and select it on every rank; when a rank cannot select
  !> it, all fall back together to older ones. generation = 0: nothing in common. First (max_generation =
  !> huge), ranks that lack the newest generation another rank reads get their parts back from partner
  !> copies, when kept (partner_restore).
  function agree(comm, max_generation, generation, step) result(status)
    type(MPI_Comm), intent(in) :: comm
    integer(c_int64_t), intent(in) :: max_generation
    integer(c_int64_t), intent(out) :: generation, step
    integer(c_int32_t) :: status, rc
    integer(c_int64_t) :: limit, g, v(2), s(3), my_step
    logical :: ok, first
    limit = max_generation
    generation = 0
    step = 0
    first = max_generation == huge(0_c_int64_t)
    do
      g = 0
      rc = ckpt_newest_valid_generation(limit, g)
      if (first) then
        ! parts a lost node had, back from their partners first (nothing without CKPT_PARTNER)
        first = .false.
        status = partner_restore(comm, rc, g)
        if (status /= CKPT_OK) return
      end if
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
