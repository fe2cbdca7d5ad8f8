/* The C ABI from a C program's side: return codes, reference counting, NULL
 * arguments, the opal_crs vtable, strings, option and snapshot objects. Built with
 * warnings as errors, with and without sanitizers, as PIE and as non-PIE.
 *   abi            run every check, print "abi ok" and exit 0
 *   abi init-rc    print the return code of opal_init and exit 0 */
#include <opal/constants.h>
#include <opal/mca/crs/base/base.h>
#include <opal/runtime/opal.h>
#include <opal/runtime/opal_cr.h>
#include <opal_config.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                        \
        }                                                                      \
    } while (0)

int opal_crs_self_user_checkpoint(char **restart_cmd)
{
    *restart_cmd = strdup("true");
    return OPAL_SUCCESS;
}

static int my_coord(int state) { return state >= 0 ? OPAL_SUCCESS : OPAL_ERROR; }
static int my_inc(opal_cr_user_inc_callback_event_t e, opal_cr_user_inc_callback_state_t s) { return e + s >= 0 ? OPAL_SUCCESS : OPAL_ERROR; }

static void check_state_str(opal_crs_state_type_t state, const char *want)
{
    char *text = opal_crs_base_state_str(state);
    CHECK(text != NULL && strcmp(text, want) == 0);
    free(text);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "init-rc") == 0) {
        int rc = opal_init(NULL, NULL);
        printf("opal_init rc=%d selected=%s\n", rc, opal_crs.crs_checkpoint != NULL ? "yes" : "no");
        if (rc == OPAL_SUCCESS)
            opal_finalize();
        return 0;
    }

    /* Values of the original constants. */
    CHECK(OPAL_SUCCESS == 0 && OPAL_ERROR == -1 && OPAL_ERR_BAD_PARAM == -5 && OPAL_EXISTS == -14);
    CHECK(OPAL_ERR_NOT_AVAILABLE == -16 && OPAL_ERR_PERM == -17 && OPAL_ERR_NOT_FOUND == -13);
    CHECK(OPAL_CRS_NONE == 0 && OPAL_CRS_RESTART == 3 && OPAL_CRS_CONTINUE == 4 && OPAL_CRS_ERROR == 7 && OPAL_CRS_STATE_MAX == 8);
    CHECK(OPAL_CHECKPOINT_CMD_START == 0 && OPAL_CR_STATUS_RESTART_POST == 10);
    CHECK(OMPI_CR_INC_MAX == 6 && OPAL_CR_INC_POST_CRS_POST_MPI == 5 && OPAL_CR_INC_STATE_ERROR == 3);
    CHECK(OPAL_ENABLE_FT_CR == 1);

    /* Version macros agree with the library. */
    char version[64];
    snprintf(version, sizeof version, "%d.%d.%d", OPALCRS_VERSION_MAJOR, OPALCRS_VERSION_MINOR, OPALCRS_VERSION_PATCH);
    CHECK(strcmp(version, opalcrs_version()) == 0);
    CHECK(strcmp(opalcrs_strerror(OPAL_ERR_BAD_PARAM), "Bad parameter") == 0);
    CHECK(opalcrs_strerror(12345) != NULL);

    check_state_str(OPAL_CRS_CHECKPOINT, "Checkpoint");
    check_state_str(OPAL_CRS_RESTART, "Restart");
    check_state_str(OPAL_CRS_CONTINUE, "Continue");
    check_state_str(OPAL_CRS_TERM, "Terminate");
    check_state_str(OPAL_CRS_ERROR, "Error");
    check_state_str(OPAL_CRS_RESTART_PRE, "Unknown");
    check_state_str(99, "Unknown");

    /* Nothing selected before opal_init; finalize without init is an error. */
    CHECK(opal_crs.crs_checkpoint == NULL && opal_crs.crs_init == NULL);
    CHECK(opal_finalize() == OPAL_ERROR);
    CHECK(opal_finalize_util() == OPAL_ERROR);

    /* Reference counting, NULL arguments legal. */
    CHECK(opal_init(NULL, NULL) == OPAL_SUCCESS);
    CHECK(opal_init(&argc, &argv) == OPAL_SUCCESS);
    CHECK(opal_crs.crs_checkpoint != NULL && opal_crs.crs_restart != NULL && opal_crs.crs_reg_thread != NULL);
    CHECK(opal_crs.crs_disable_checkpoint() == OPAL_SUCCESS && opal_crs.crs_enable_checkpoint() == OPAL_SUCCESS);
    CHECK(opal_finalize() == OPAL_SUCCESS);
    CHECK(opal_crs.crs_checkpoint != NULL);
    CHECK(opal_finalize() == OPAL_SUCCESS);
    CHECK(opal_crs.crs_checkpoint == NULL);
    CHECK(opal_finalize() == OPAL_ERROR);
    CHECK(opal_init_util(NULL, NULL) == OPAL_SUCCESS);
    CHECK(opal_finalize_util() == OPAL_SUCCESS);

    /* Callback registration: NULL prev allowed, previous returned, bad event refused. */
    opal_cr_coord_callback_fn_t prev_coord = NULL;
    CHECK(opal_cr_reg_coord_callback(my_coord, &prev_coord) == OPAL_SUCCESS);
    CHECK(prev_coord != NULL);
    CHECK(opal_cr_reg_coord_callback(prev_coord, NULL) == OPAL_SUCCESS);
    CHECK(opal_cr_coord(OPAL_CRS_CHECKPOINT) == OPAL_SUCCESS);
    opal_cr_user_inc_callback_fn_t prev_inc = my_inc;
    CHECK(opal_cr_user_inc_register_callback(OPAL_CR_INC_PRE_CRS_PRE_MPI, my_inc, &prev_inc) == OPAL_SUCCESS);
    CHECK(prev_inc == NULL);
    CHECK(opal_cr_user_inc_register_callback(OMPI_CR_INC_MAX, my_inc, NULL) == OPAL_ERROR);
    CHECK(opal_cr_user_inc_register_callback(-1, my_inc, NULL) == OPAL_ERROR);
    CHECK(opal_cr_user_inc_register_callback(OPAL_CR_INC_PRE_CRS_PRE_MPI, NULL, NULL) == OPAL_SUCCESS);
    opal_cr_notify_callback_fn_t prev_notify = NULL;
    CHECK(opal_cr_reg_notify_callback(NULL, &prev_notify) == OPAL_SUCCESS && prev_notify != NULL);
    CHECK(opal_cr_reg_notify_callback(prev_notify, NULL) == OPAL_SUCCESS);

    /* Options and snapshot objects; NULL where the original returned OPAL_ERROR. */
    opal_crs_base_ckpt_options_t *a = opalcrs_options_new(), *b = opalcrs_options_new();
    CHECK(opalcrs_options_set_term(a, true) == OPAL_SUCCESS && opalcrs_options_get_term(a));
    CHECK(opal_crs_base_copy_options(a, b) == OPAL_SUCCESS && opalcrs_options_get_term(b));
    CHECK(opal_crs_base_clear_options(b) == OPAL_SUCCESS && !opalcrs_options_get_term(b));
    CHECK(opal_crs_base_copy_options(NULL, b) == OPAL_ERROR && opal_crs_base_copy_options(a, NULL) == OPAL_ERROR);
    CHECK(opal_crs_base_clear_options(NULL) == OPAL_ERROR);
    CHECK(opalcrs_options_set_term(NULL, true) == OPAL_ERR_BAD_PARAM);
    opalcrs_options_free(a);
    opalcrs_options_free(b);
    opalcrs_options_free(NULL);
    opal_crs_base_snapshot_t *snap = opalcrs_snapshot_new("/some/dir");
    CHECK(snap != NULL && strcmp(opalcrs_snapshot_directory(snap), "/some/dir") == 0);
    CHECK(opalcrs_snapshot_component(snap) == NULL && opalcrs_snapshot_directory(NULL) == NULL);
    opalcrs_snapshot_free(snap);
    opalcrs_snapshot_free(NULL);

    /* Metadata helpers on a FILE*. */
    FILE *meta = tmpfile();
    fputs("# PID: 4242\n# OPAL CRS Component: self\n# CONTEXT: ./app -x 3\n# CONTEXT: second\n", meta);
    char *component = NULL;
    int pid = 0;
    CHECK(opal_crs_base_extract_expected_component(meta, &component, &pid) == OPAL_SUCCESS);
    CHECK(component != NULL && strcmp(component, "self") == 0 && pid == 4242);
    free(component);
    char **values = NULL;
    CHECK(opal_crs_base_metadata_read_token(meta, "# CONTEXT: ", &values) == OPAL_SUCCESS);
    CHECK(values != NULL && strcmp(values[0], "./app -x 3") == 0 && strcmp(values[1], "second") == 0 && values[2] == NULL);
    for (char **v = values; v && *v; v++)
        free(*v);
    free(values);
    CHECK(opal_crs_base_metadata_read_token(NULL, "# PID: ", &values) == OPAL_ERROR);
    CHECK(opal_crs_base_extract_expected_component(NULL, &component, &pid) == OPAL_ERROR);
    fclose(meta);

    /* Cleanup list: NULL is a no-op success. */
    CHECK(opal_crs_base_cleanup_append(NULL, false) == OPAL_SUCCESS);
    CHECK(opal_crs_base_cleanup_flush() == OPAL_SUCCESS);

    /* Outside opal_init, taking a checkpoint is refused with a clear code. */
    int state = -1;
    CHECK(opalcrs_checkpoint(&state) == OPAL_ERR_NOT_INITIALIZED && state == OPAL_CRS_ERROR);
    CHECK(opalcrs_snapshot_dir() == NULL);
    OPAL_CR_ENTER_LIBRARY();
    OPAL_CR_EXIT_LIBRARY();
    OPAL_CR_NOOP_PROGRESS();
    OPAL_CR_TEST_CHECKPOINT_READY();

    if (failures) {
        fprintf(stderr, "abi: %d checks failed\n", failures);
        return 1;
    }
    printf("abi ok\n");
    return 0;
}
