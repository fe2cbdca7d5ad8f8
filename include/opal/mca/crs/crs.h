/* Compatibility shim for <opal/mca/crs/crs.h>: the state enum, the module vtable
   (opal_crs_base_module_t) and the exported opal_crs. Snapshot and options objects
   are opaque here: make them with opalcrs_snapshot_new()/opalcrs_options_new(). */
#ifndef OPALCRS_OPAL_MCA_CRS_CRS_H
#define OPALCRS_OPAL_MCA_CRS_CRS_H
#include <opal_config.h>
#include <opal_crs.h>

#define OPAL_CRS_BASE_VERSION_2_0_0 "crs", 2, 0, 0
#endif
