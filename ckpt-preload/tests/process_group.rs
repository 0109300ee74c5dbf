//! The process group a program knew keeps naming its group after each restart. A restarted tree is in
//! another group (a program that led its group, as an interactive shell's job or under `setsid`, was
//! group `getpid()`, and the restart has another pid). Before the fix, a group id taken before the
//! checkpoint failed after the restart: `waitpid(-pgid)` and `waitid(P_PGID)` with ECHILD (a shell or a
//! worker pool takes that for "no children left"), `kill(-pgid)` and `killpg` with ESRCH, or they reached
//! whatever group has that number now. A blocking `waitpid(-pgid)` that the checkpoint interrupts is
//! restarted by the kernel with the old group, which the restorer rewrites.

mod common;

use common::*;

/// Forks a child per iteration (it sleeps 2 ms and exits with the iteration number), checks the group it
/// took at start with kill, killpg and waitid (no wait), and reaps the child with a blocking
/// `waitpid(-pgid)`, where the checkpoints usually come. Prints "ok N", or "ERROR ..." and exits.
const GROUP_WAITS: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pid_t pg = getpgrp();
    int led = pg == getpid();
    printf("group %d%s\n", (int)pg, led ? ", its leader" : "");
    for (long i = 0;; i++) {
        if (led && getpgrp() != getpid()) {
            printf("ERROR no longer leads its group: group %d, pid %d\n", (int)getpgrp(), (int)getpid());
            return 1;
        }
        pid_t kid = fork();
        if (kid < 0) {
            printf("ERROR fork: %s\n", strerror(errno));
            return 1;
        }
        if (kid == 0) {
            usleep(2000);
            _exit((int)(i % 100));
        }
        if (kill(-pg, 0) != 0) {
            printf("ERROR kill(-%d, 0): %s\n", (int)pg, strerror(errno));
            return 1;
        }
        if (killpg(pg, 0) != 0) {
            printf("ERROR killpg(%d, 0): %s\n", (int)pg, strerror(errno));
            return 1;
        }
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_PGID, (id_t)pg, &si, WEXITED | WNOHANG | WNOWAIT) != 0) {
            printf("ERROR waitid(P_PGID, %d): %s\n", (int)pg, strerror(errno));
            return 1;
        }
        int st = 0;
        pid_t r = waitpid(-pg, &st, 0);
        if (r != kid) {
            printf("ERROR waitpid(-%d) returned %d (%s), the child is %d\n", (int)pg, (int)r,
                   r < 0 ? strerror(errno) : "another pid", (int)kid);
            return 1;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != (int)(i % 100)) {
            printf("ERROR child %d: status %#x, expected exit %ld\n", (int)kid, st, i % 100);
            return 1;
        }
        printf("ok %ld\n", i);
    }
}
"#;

/// The program leads its own group (as under an interactive shell or `setsid`): through five
/// incarnations its group keeps naming the group it leads now, and it leads one again after each restart.
#[test]
fn a_group_the_program_led_keeps_naming_its_group_through_restarts() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "group_waits", GROUP_WAITS, &["-O1"]) else { return };
    restart_while_busy_in(&exe, 5, 150, Group::Own);
}

/// The program led its group in the first run and is restarted from the test's group (a job started by
/// hand, restarted by a batch script): `ckpt restart` makes it lead a group of its own again, so that a
/// signal to the group it knew reaches the program's processes only, never the test's (the batch
/// script's shell).
#[test]
fn a_program_that_led_its_group_leads_one_again_when_restarted_from_another_group() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "group_waits", GROUP_WAITS, &["-O1"]) else { return };
    restart_while_busy_in(&exe, 3, 150, Group::OwnAtFirst);
}

/// The program is in the test's group (as a batch script's program is in the shell's): the group it
/// knew is the restart's group too, and nothing changes.
#[test]
fn a_group_the_program_was_in_keeps_working_through_restarts() {
    let build = tempfile::tempdir().unwrap();
    let Some(exe) = build_c(build.path(), "group_waits", GROUP_WAITS, &["-O1"]) else { return };
    restart_while_busy_in(&exe, 3, 150, Group::Inherited);
}
