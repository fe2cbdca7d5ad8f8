/* Compatibility shim for <opal/mca/crs/base/base.h>: the opal_crs_base_* functions
   and the self-callback registration are declared in opal_crs.h. */
#ifndef OPALCRS_OPAL_MCA_CRS_BASE_BASE_H
#define OPALCRS_OPAL_MCA_CRS_BASE_BASE_H
#include <opal/mca/crs/crs.h>
#define opal_crs_base_metadata_filename strdup("snapshot_meta.data")
#endif
