/* Compatibility shim for <opal/runtime/opal_cr.h>: the opal_cr_* functions are in
   opal_crs.h; this file adds the original's macros and the later OPAL_CR_INC_*
   spelling of the INC event names. */
#ifndef OPALCRS_OPAL_RUNTIME_OPAL_CR_H
#define OPALCRS_OPAL_RUNTIME_OPAL_CR_H
#include <opal_config.h>
#include <opal/mca/crs/crs.h>

#define OPAL_CR_NAMED_PROG_R "opal_cr_prog_read"
#define OPAL_CR_NAMED_PROG_W "opal_cr_prog_write"
#define OPAL_CR_BASE_ENV_NAME "opal_cr_restart-env"

/* Master (trunk) spelling of the INC events and states, same values. */
#define OPAL_CR_INC_PRE_CRS_PRE_MPI OMPI_CR_INC_PRE_CRS_PRE_MPI
#define OPAL_CR_INC_PRE_CRS_POST_MPI OMPI_CR_INC_PRE_CRS_POST_MPI
#define OPAL_CR_INC_CRS_PRE_CKPT OMPI_CR_INC_CRS_PRE_CKPT
#define OPAL_CR_INC_CRS_POST_CKPT OMPI_CR_INC_CRS_POST_CKPT
#define OPAL_CR_INC_POST_CRS_PRE_MPI OMPI_CR_INC_POST_CRS_PRE_MPI
#define OPAL_CR_INC_POST_CRS_POST_MPI OMPI_CR_INC_POST_CRS_POST_MPI
#define OPAL_CR_INC_MAX OMPI_CR_INC_MAX
#define OPAL_CR_INC_STATE_PREPARE OMPI_CR_INC_STATE_PREPARE
#define OPAL_CR_INC_STATE_CONTINUE OMPI_CR_INC_STATE_CONTINUE
#define OPAL_CR_INC_STATE_RESTART OMPI_CR_INC_STATE_RESTART
#define OPAL_CR_INC_STATE_ERROR OMPI_CR_INC_STATE_ERROR

/* Library entry/exit points: with the listener thread (opal_cr_use_thread=1) a
   checkpoint is deferred while a thread is between ENTER and EXIT; without it these
   are the points where a pending request is served. */
#define OPAL_CR_TEST_CHECKPOINT_READY() opal_cr_test_if_checkpoint_ready()
#define OPAL_CR_TEST_CHECKPOINT_READY_STALL() opal_cr_test_if_checkpoint_ready()
#define OPAL_CR_INIT_LIBRARY() opal_cr_thread_init_library()
#define OPAL_CR_FINALIZE_LIBRARY() opal_cr_thread_finalize_library()
#define OPAL_CR_ABORT_LIBRARY() opal_cr_thread_abort_library()
#define OPAL_CR_ENTER_LIBRARY() opal_cr_thread_enter_library()
#define OPAL_CR_EXIT_LIBRARY() opal_cr_thread_exit_library()
#define OPAL_CR_NOOP_PROGRESS() opal_cr_thread_noop_progress()
#endif
