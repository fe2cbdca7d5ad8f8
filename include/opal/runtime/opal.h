/* Compatibility shim for <opal/runtime/opal.h>: opal_init, opal_finalize and the
   utility variants are declared in opal_crs.h. */
#ifndef OPALCRS_OPAL_RUNTIME_OPAL_H
#define OPALCRS_OPAL_RUNTIME_OPAL_H
#include <opal_config.h>
#include <opal_crs.h>
#endif
