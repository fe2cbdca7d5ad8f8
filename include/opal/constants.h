/* Compatibility shim: the OPAL return codes live in opal_crs.h. */
#ifndef OPALCRS_OPAL_CONSTANTS_H
#define OPALCRS_OPAL_CONSTANTS_H
#include <opal_crs.h>
#endif
