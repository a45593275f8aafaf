/* Preloaded into a process (LD_PRELOAD) that may crash: on SIGSEGV prints the native stack (each frame's
 * library and offset, or symbol) to stderr, then lets the signal kill the process as it would have. */
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static void print_stack(int sig) {
    static const char title[] = "segv_trace: native stack at the fault\n";
    void *frames[64];
    int depth = backtrace(frames, 64);
    (void)!write(2, title, sizeof title - 1);
    backtrace_symbols_fd(frames, depth, 2);
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = print_stack;
    sigaction(SIGSEGV, &action, NULL);
}
