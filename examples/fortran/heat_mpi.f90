! heat_mpi.f90: the 2-D heat-diffusion (Jacobi) solver of examples/c/heat_mpi.c in Fortran: an N x N grid,
! its rows decomposed over the MPI ranks with halo exchange, checkpointed collectively with module ckpt_mpi.
!
!   SIGUSR1 (to every rank, or to any one: the ranks agree): a collective checkpoint, then it continues.
!   SIGTERM: a collective checkpoint, then every rank exits with status 0 (the job can be requeued); with
!            a node-local cache level (CKPT_CACHE_DIR) once the checkpoint is durable in the checkpoint
!            directory, a few iterations later.
!
! On start it restarts collectively from the newest checkpoint every rank can read, also one written by
! another number of ranks (its rows redistributed: restart_redistributed, with ckpt_restart_step and
! ckpt_restart_part). The field is stored as u(column, row) so its memory layout, and so the final crc32,
! are those of the C version.
!
! Usage: heat_mpi [N] [ITERATIONS] [DELAY_US]   (default 256 256 0); HEAT_RESULT=path: rank 0 also writes
!        the final line there; HEAT_PROGRESS=k: prints "iteration i" every k iterations.
! Build: make -C examples/fortran
program heat_mpi
  use, intrinsic :: iso_c_binding
  use, intrinsic :: iso_fortran_env, only: output_unit, error_unit, int8, int64
  use mpi_f08
  use ckpt
  use ckpt_mpi
  implicit none

  interface
    function c_getpid() bind(C, name="getpid") result(pid)
      import :: c_int
      integer(c_int) :: pid
    end function c_getpid
    function c_usleep(us) bind(C, name="usleep") result(rc)
      import :: c_int
      integer(c_int), value :: us
      integer(c_int) :: rc
    end function c_usleep
  end interface

  type(MPI_Comm) :: comm
  integer :: rank, nranks, n, rows, row0, base, extra, up, down, i, j, g, r, ierr
  integer(c_int64_t), target :: iteration
  integer(c_int64_t) :: iterations, step, progress, last_checkpoint
  integer(c_int) :: delay_us, ignored
  integer(c_int32_t) :: rc, found, written_by, due, leave
  integer(c_size_t) :: stored
  real(c_double), pointer, contiguous :: u(:, :), next(:, :), t(:, :)
  real(c_double), allocatable :: all(:, :)
  integer, allocatable :: counts(:), displs(:)
  integer(c_int64_t), allocatable :: ints(:)
  character(len=64) :: arg
  character(len=256) :: line, result_path
  real(c_double) :: total

  call MPI_Init(ierr)
  comm = MPI_COMM_WORLD
  call MPI_Comm_rank(comm, rank, ierr)
  call MPI_Comm_size(comm, nranks, ierr)

  n = 256
  iterations = 256
  delay_us = 0
  if (command_argument_count() >= 1) then
    call get_command_argument(1, arg)
    read(arg, *) n
  end if
  if (command_argument_count() >= 2) then
    call get_command_argument(2, arg)
    read(arg, *) iterations
  end if
  if (command_argument_count() >= 3) then
    call get_command_argument(3, arg)
    read(arg, *) delay_us
  end if
  progress = 0
  call get_environment_variable('HEAT_PROGRESS', arg)
  if (len_trim(arg) > 0) read(arg, *) progress
  if (n < 3 .or. n < nranks .or. iterations < 0 .or. delay_us < 0) then
    if (rank == 0) write(error_unit, '(a)') 'usage: heat_mpi [N >= max(3, ranks)] [ITERATIONS] [DELAY_US]'
    call MPI_Abort(comm, 2, ierr)
  end if

  ! global rows row0 .. row0+rows-1 belong to this rank; local rows 0 and rows+1 are halos
  base = n / nranks
  extra = mod(n, nranks)
  rows = base + merge(1, 0, rank < extra)
  row0 = rank * base + min(rank, extra)
  allocate(u(0:n - 1, 0:rows + 1), next(0:n - 1, 0:rows + 1))
  u = 0
  next = 0
  do i = 1, rows
    if (row0 + i - 1 == 0) u(:, i) = 100.0_c_double ! the hot top edge
  end do
  iteration = 0

  rc = ckpt_mpi_init(comm, "heat_mpi")
  if (rc /= CKPT_OK) call fail('ckpt_mpi_init', rc)
  ! one line from rank 0 (MPI launchers may interleave the ranks' output): every rank's pid, printed once
  ! every rank's signal handlers are installed
  allocate(ints(merge(nranks, 1, rank == 0)))
  call MPI_Gather(int(c_getpid(), c_int64_t), 1, MPI_INT64_T, ints, 1, MPI_INT64_T, 0, comm, ierr)
  if (rank == 0) then
    write(output_unit, '(a,i0,a,*(1x,i0))') 'heat_mpi: ', nranks, ' ranks, pids', ints
    flush(output_unit)
  end if

  ! agree on the checkpoint first and check the stored field's size before reading it
  found = 0
  step = 0
  rc = ckpt_mpi_have_restart(comm, found, step)
  written_by = 0
  if (rc == CKPT_ERR_NO_VALID_CHECKPOINT) then
    ! Perhaps a step written by another number of ranks: read this rank's rows from the old ranks' parts.
    if (restart_redistributed(written_by) == CKPT_OK) then
      rc = CKPT_OK
      found = 1
      if (rank == 0) then
        write(output_unit, '(a,i0,a,i0,a)') 'redistributed a step of ', written_by, ' ranks over ', nranks, ' ranks'
        flush(output_unit)
      end if
    end if
  end if
  if (rc /= CKPT_OK) call fail('ckpt_mpi_have_restart', rc)
  if (found == 1 .and. written_by == 0) then
    stored = 0
    rc = ckpt_mpi_restart_size(comm, 0_c_int32_t, stored)
    if (rc /= CKPT_OK) call fail('ckpt_mpi_restart_size', rc)
    if (stored /= size(u, kind=c_size_t) * c_sizeof(u(0, 0))) then
      write(error_unit, '(a,i0,a,i0,a,i0)') 'heat_mpi: rank ', rank, ': the checkpoint holds ', stored, &
        ' bytes of field, this grid needs ', size(u, kind=c_size_t) * c_sizeof(u(0, 0))
      call MPI_Abort(comm, 1, ierr)
    end if
  end if
  rc = ckpt_protect_f(0_c_int32_t, u)
  if (rc /= CKPT_OK) call fail('ckpt_protect_f', rc)
  rc = ckpt_protect_f(1_c_int32_t, iteration)
  if (rc /= CKPT_OK) call fail('ckpt_protect_f', rc)
  if (written_by == 0) then
    rc = ckpt_mpi_restart(comm, found, step)
    if (rc /= CKPT_OK) call fail('ckpt_mpi_restart', rc)
  end if
  if (rank == 0) then
    if (found == 1) then
      write(output_unit, '(a,i0)') 'resumed at iteration ', iteration
    else
      write(output_unit, '(a,i0,a,i0,a,i0,a,i0,a)') 'starting fresh: ', n, ' x ', n, ', ', iterations, &
        ' iterations, ', nranks, ' ranks'
    end if
    flush(output_unit)
  end if

  last_checkpoint = -1
  up = merge(rank - 1, MPI_PROC_NULL, rank > 0)
  down = merge(rank + 1, MPI_PROC_NULL, rank < nranks - 1)
  do while (iteration < iterations)
    ! halo exchange: first owned row up / bottom halo from below, last owned row down / top halo
    call MPI_Sendrecv(u(:, 1), n, MPI_DOUBLE_PRECISION, up, 0, u(:, rows + 1), n, MPI_DOUBLE_PRECISION, down, 0, &
                      comm, MPI_STATUS_IGNORE, ierr)
    call MPI_Sendrecv(u(:, rows), n, MPI_DOUBLE_PRECISION, down, 1, u(:, 0), n, MPI_DOUBLE_PRECISION, up, 1, &
                      comm, MPI_STATUS_IGNORE, ierr)
    next = u
    do i = 1, rows
      g = row0 + i - 1
      if (g == 0 .or. g == n - 1) cycle ! fixed boundary rows
      do j = 1, n - 2
        next(j, i) = 0.25_c_double * (u(j, i - 1) + u(j, i + 1) + u(j - 1, i) + u(j + 1, i))
      end do
    end do
    t => u
    u => next
    next => t
    iteration = iteration + 1
    if (delay_us > 0) ignored = c_usleep(delay_us)
    if (progress > 0 .and. rank == 0) then
      if (mod(iteration, progress) == 0) then
        write(output_unit, '(a,i0)') 'iteration ', iteration
        flush(output_unit)
      end if
    end if

    ! both flags with one allreduce, every iteration: with a node-local cache level (CKPT_CACHE_DIR)
    ! SIGTERM's checkpoint is copied to the checkpoint directory in the background and the exit is due
    ! only once it is durable there, a few iterations after the checkpoint
    due = 0
    leave = 0
    rc = ckpt_mpi_poll(comm, due, leave)
    if (rc /= CKPT_OK) call fail('ckpt_mpi_poll', rc)
    if (due == 1) then
      ! the field moved to the other buffer: protecting id 0 again replaces the pointer
      rc = ckpt_protect_f(0_c_int32_t, u)
      if (rc /= CKPT_OK) call fail('ckpt_protect_f', rc)
      rc = ckpt_mpi_checkpoint(comm, iteration)
      if (rc /= CKPT_OK) then
        ! same status on every rank: keep computing; a signal's request stays due and is retried
        write(error_unit, '(a,i0,a,i0,a,a,a,a,a)') 'heat_mpi: rank ', rank, ': checkpoint at iteration ', iteration, &
          ' failed: ', ckpt_status_str_f(rc), ' (', ckpt_last_error_f(), ')'
      else
        if (rank == 0) then
          write(output_unit, '(a,i0)') 'checkpoint at iteration ', iteration
          flush(output_unit)
        end if
        last_checkpoint = iteration
        leave = merge(1_c_int32_t, 0_c_int32_t, ckpt_mpi_should_exit(comm) == 1) ! without a cache level: at once
      end if
    end if
    if (leave == 1) then
      ! every rank leaves here, at the same iteration: rank 0 shows each rank's
      call MPI_Gather(iteration, 1, MPI_INT64_T, ints, 1, MPI_INT64_T, 0, comm, ierr)
      if (rank == 0) then
        if (iteration == last_checkpoint) then
          write(output_unit, '(a,i0,a,*(1x,i0))') 'stopping after the checkpoint at iteration ', iteration, &
            '; the ranks stopped at', ints
        else
          write(output_unit, '(a,i0,a,i0,a,*(1x,i0))') 'stopping at iteration ', iteration, &
            ', the checkpoint at iteration ', last_checkpoint, ' durable; the ranks stopped at', ints
        end if
        flush(output_unit)
      end if
      rc = ckpt_mpi_finalize(comm)
      deallocate(u, next)
      call MPI_Finalize(ierr)
      stop
    end if
  end do

  ! gather the owned rows on rank 0 and checksum them in a fixed order (the memory order of the C version)
  if (rank == 0) then
    allocate(all(0:n - 1, 0:n - 1), counts(nranks), displs(nranks))
    do r = 0, nranks - 1
      counts(r + 1) = (base + merge(1, 0, r < extra)) * n
      displs(r + 1) = (r * base + min(r, extra)) * n
    end do
  else
    allocate(all(1, 1), counts(1), displs(1))
  end if
  call MPI_Gatherv(u(:, 1:rows), rows * n, MPI_DOUBLE_PRECISION, all, counts, displs, MPI_DOUBLE_PRECISION, 0, &
                   comm, ierr)
  if (rank == 0) then
    total = 0
    do i = 0, n - 1
      do j = 0, n - 1
        total = total + all(j, i)
      end do
    end do
    write(line, '(a,i0,a,i0,a,i0,a,z8.8,a,es24.17)') 'done: ', n, ' x ', n, ', ', iterations, ' iterations, crc32 ', &
      crc32(transfer(all, [0_int8])), ', sum ', total
    write(output_unit, '(a)') trim(line)
    flush(output_unit)
    call get_environment_variable('HEAT_RESULT', result_path)
    if (len_trim(result_path) > 0) then
      open(newunit=r, file=trim(result_path), status='replace', action='write')
      write(r, '(a)') trim(line)
      close(r)
    end if
  end if
  rc = ckpt_mpi_finalize(comm)
  if (rc /= CKPT_OK) call fail('ckpt_mpi_finalize', rc)
  deallocate(u, next)
  call MPI_Finalize(ierr)

contains

  !> Restart on another number of ranks, as restart_redistributed in examples/c/heat_mpi.c: the newest step
  !> every rank can read whatever number of ranks wrote it (ckpt_restart_step verifies every part, so every
  !> rank chooses the same one; checked below). This rank's grid rows row0 .. row0+rows-1 are copied into u
  !> from the parts of the old ranks that owned them (their rows follow from the same split over the old
  !> number of ranks); the halo rows are exchanged by the first iteration, as after any restart. The
  !> iteration comes from old rank 0's part. The same status on every rank; written_by: the old number of
  !> ranks (set on success).
  function restart_redistributed(written_by) result(status)
    integer(c_int32_t), intent(inout) :: written_by
    integer(c_int32_t) :: status, old, rc
    integer(c_int64_t) :: old_step, v(3)
    integer(c_size_t) :: len
    integer :: ob, oe, p, orows, orow0, lo, hi, e
    real(c_double), allocatable, target :: part(:, :)
    old = 0
    old_step = 0
    rc = ckpt_restart_step(old, old_step)
    ! every rank must have chosen the same step: {step, -step, -status} maximised
    if (rc == CKPT_OK) then
      v = [old_step, -old_step, 0_c_int64_t]
    else
      v = [-1_c_int64_t, 1_c_int64_t, -int(rc, c_int64_t)]
    end if
    call MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T, MPI_MAX, comm, e)
    if (e /= MPI_SUCCESS) then
      status = CKPT_ERR_MPI
      return
    end if
    if (v(3) /= 0) then
      status = int(-v(3), c_int32_t)
      return
    end if
    if (v(1) /= -v(2)) then
      status = CKPT_ERR_INVALID_STATE
      return
    end if
    ob = n / old
    oe = mod(n, old)
    do p = 0, old - 1
      orows = ob + merge(1, 0, p < oe)
      orow0 = p * ob + min(p, oe)
      lo = max(row0, orow0)
      hi = min(row0 + rows, orow0 + orows)
      if (lo >= hi) cycle
      len = 0
      rc = ckpt_restart_part_size(int(p, c_int32_t), 0_c_int32_t, len)
      if (rc /= CKPT_OK) exit
      if (len /= int(orows + 2, c_size_t) * int(n, c_size_t) * c_sizeof(u(0, 0))) then
        rc = CKPT_ERR_SIZE_MISMATCH ! another grid size
        exit
      end if
      allocate(part(0:n - 1, 0:orows + 1))
      rc = ckpt_restart_part(int(p, c_int32_t), 0_c_int32_t, c_loc(part), len)
      if (rc == CKPT_OK) u(:, lo - row0 + 1:hi - row0) = part(:, lo - orow0 + 1:hi - orow0)
      deallocate(part)
      if (rc /= CKPT_OK) exit
    end do
    if (rc == CKPT_OK) rc = ckpt_restart_part(0_c_int32_t, 1_c_int32_t, c_loc(iteration), c_sizeof(iteration))
    ! the same outcome on every rank
    call MPI_Allreduce(rc, status, 1, MPI_INT32_T, MPI_MIN, comm, e)
    if (e /= MPI_SUCCESS) status = CKPT_ERR_MPI
    if (status == CKPT_OK) written_by = old
  end function restart_redistributed

  subroutine fail(what, status)
    character(len=*), intent(in) :: what
    integer(c_int32_t), intent(in) :: status
    integer :: e
    write(error_unit, '(a,i0,a,a,a,a,a,a,a)') 'heat_mpi: rank ', rank, ': ', what, ' failed: ', &
      ckpt_status_str_f(status), ' (', ckpt_last_error_f(), ')'
    call MPI_Abort(MPI_COMM_WORLD, 1, e)
  end subroutine fail

  !> CRC-32 (IEEE, reflected, as zlib) of bytes, as a non-negative integer below 2**32.
  function crc32(bytes) result(crc)
    integer(int8), intent(in) :: bytes(:)
    integer(int64) :: crc
    integer(int64), parameter :: poly = int(z'EDB88320', int64), mask = int(z'FFFFFFFF', int64)
    integer :: k, b
    crc = mask
    do k = 1, size(bytes)
      crc = ieor(crc, iand(int(bytes(k), int64), 255_int64))
      do b = 1, 8
        if (iand(crc, 1_int64) /= 0) then
          crc = ieor(shiftr(crc, 1), poly)
        else
          crc = shiftr(crc, 1)
        end if
      end do
    end do
    crc = ieor(crc, mask)
  end function crc32

end program heat_mpi
