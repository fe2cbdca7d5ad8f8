/* A test program for the self component. It counts, logs what happens to LOG (one
 * line per event, O_APPEND), saves its counter on checkpoint and loads it on restart.
 *   selfapp LOG [options]
 * Built with -DSELFAPP_CUSTOM it exports custom_checkpoint/_continue/_restart instead
 * of the default names; with -DSELFAPP_NO_EXPORT it exports none.
 *   --register    register static callbacks with opal_crs_base_self_register_*
 *   --register-late  the same, after opal_init
 *   --poll        call opal_cr_test_if_checkpoint_ready() every step (opal_cr_use_thread=0)
 *   --critical N  at count N, stay 1.5 s between OPAL_CR_ENTER_LIBRARY and _EXIT
 *   --api N       at count N, call opalcrs_checkpoint()
 *   --notify      replace the notify callback (logs, then calls the previous one)
 *   --null-cmd    the checkpoint callback gives no restart command
 *   --slow MS     the checkpoint callback takes MS milliseconds
 *   --fail-at N   the checkpoint callback gives no restart command on its Nth call only
 *   --error-at N  the checkpoint callback gives a restart command but returns OPAL_ERROR
 *                 on its Nth call only
 *   --state-bytes N  the state file also holds N bytes of padding; the callback returns
 *                 OPAL_ERROR (with a restart command) when the state cannot be written
 *   --limit N     exit 0 after count N
 * The restart command is this program with the same arguments. */
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "say.h"

static atomic_long counter;
static atomic_int in_init;
static char restart_cmd_line[8192];
static int null_cmd, slow_ms;
static long fail_at = -1, error_at = -1, state_bytes;
static atomic_long checkpoint_calls;

/* Writes the counter and the padding; 0 when any of it could not be written (the
 * partial file is then removed, giving back its space). */
static int write_state(const char *path, long value)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return 0;
    int ok = fprintf(f, "%ld\n", value) > 0;
    for (long i = 0; ok && i < state_bytes; i++)
        ok = fputc('.', f) != EOF;
    ok = fflush(f) == 0 && ok;
    ok = fclose(f) == 0 && ok;
    if (!ok)
        unlink(path);
    return ok;
}

static int save(char **restart_cmd, const char *who)
{
    if (slow_ms)
        usleep((useconds_t)slow_ms * 1000);
    long value = atomic_load(&counter);
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
    int saved = write_state(path, value);
    long call = atomic_fetch_add(&checkpoint_calls, 1) + 1;
    say("checkpoint %s value=%ld dir=%s", who, value, opalcrs_snapshot_dir());
    if (call == fail_at)
        say("checkpoint call %ld fails", call);
    else if (!null_cmd)
        *restart_cmd = strdup(restart_cmd_line);
    if (!saved) {
        say("checkpoint call %ld could not write its state", call);
        return OPAL_ERROR;
    }
    if (call == error_at) {
        say("checkpoint call %ld returns OPAL_ERROR", call);
        return OPAL_ERROR;
    }
    return OPAL_SUCCESS;
}

static int resume(const char *who)
{
    say("continue %s", who);
    return OPAL_SUCCESS;
}

static int load(const char *who)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/state", opalcrs_snapshot_dir());
    FILE *f = fopen(path, "r");
    long value = -1;
    if (f != NULL) {
        if (fscanf(f, "%ld", &value) != 1)
            value = -1;
        fclose(f);
    }
    atomic_store(&counter, value);
    const char *env_dir = getenv("OPALCRS_SNAPSHOT_DIR");
    say("restart %s in_init=%d value=%ld env_dir=%s", who, atomic_load(&in_init), value, env_dir ? env_dir : "(null)");
    return OPAL_SUCCESS;
}

#ifdef SELFAPP_CUSTOM
int custom_checkpoint(char **cmd) { return save(cmd, "custom"); }
int custom_continue(void) { return resume("custom"); }
int custom_restart(void) { return load("custom"); }
#elif !defined(SELFAPP_NO_EXPORT)
int opal_crs_self_user_checkpoint(char **cmd) { return save(cmd, "default"); }
int opal_crs_self_user_continue(void) { return resume("default"); }
int opal_crs_self_user_restart(void) { return load("default"); }
#endif
static int registered_checkpoint(char **cmd) { return save(cmd, "registered"); }
static int registered_continue(void) { return resume("registered"); }
static int registered_restart(void) { return load("registered"); }

static void register_callbacks(void)
{
    opal_crs_base_self_register_checkpoint_callback(registered_checkpoint);
    opal_crs_base_self_register_continue_callback(registered_continue);
    opal_crs_base_self_register_restart_callback(registered_restart);
}

static opal_cr_notify_callback_fn_t previous_notify;
static int my_notify(opal_cr_ckpt_cmd_state_t state)
{
    say("notify %d", state);
    return previous_notify ? previous_notify(state) : OPAL_SUCCESS;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log_fd < 0)
        return 3;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    size_t used = (size_t)snprintf(restart_cmd_line, sizeof restart_cmd_line, "'%s'", exe);
    int poll_mode = 0, notify = 0, registered = 0, registered_late = 0;
    long critical_at = -1, api_at = -1, limit = -1;
    for (int i = 1; i < argc; i++) {
        used += (size_t)snprintf(restart_cmd_line + used, sizeof restart_cmd_line - used, " '%s'", argv[i]);
        if (!strcmp(argv[i], "--register")) registered = 1;
        else if (!strcmp(argv[i], "--register-late")) registered_late = 1;
        else if (!strcmp(argv[i], "--poll")) poll_mode = 1;
        else if (!strcmp(argv[i], "--notify")) notify = 1;
        else if (!strcmp(argv[i], "--null-cmd")) null_cmd = 1;
        else if (!strcmp(argv[i], "--critical") && i + 1 < argc) critical_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--api") && i + 1 < argc) api_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--slow") && i + 1 < argc) slow_ms = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--limit") && i + 1 < argc) limit = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--fail-at") && i + 1 < argc) fail_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--error-at") && i + 1 < argc) error_at = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--state-bytes") && i + 1 < argc) state_bytes = atol(argv[i + 1]);
    }
    if (registered)
        register_callbacks();
    atomic_store(&in_init, 1);
    int rc = opal_init(&argc, &argv);
    atomic_store(&in_init, 0);
    const char *leftover = getenv("OMPI_MCA_crs_self_do_restart");
    say("init rc=%d pid=%d do_restart_env=%s", rc, (int)getpid(), leftover ? leftover : "(null)");
    if (rc != OPAL_SUCCESS)
        return 4;
    if (registered_late)
        register_callbacks();
    if (notify)
        opal_cr_reg_notify_callback(my_notify, &previous_notify);
    for (;;) {
        long now = atomic_fetch_add(&counter, 1) + 1;
        say("count %ld", now);
        if (now == critical_at) {
            OPAL_CR_ENTER_LIBRARY();
            say("critical-enter");
            usleep(1500000);
            say("critical-exit");
            OPAL_CR_EXIT_LIBRARY();
        }
        if (now == api_at) {
            int state = -1;
            int api_rc = opalcrs_checkpoint(&state);
            say("api rc=%d state=%d", api_rc, state);
        }
        if (poll_mode)
            opal_cr_test_if_checkpoint_ready();
        if (limit > 0 && now >= limit)
            break;
        usleep(50000);
    }
    say("done");
    return opal_finalize() == OPAL_SUCCESS ? 0 : 5;
}
