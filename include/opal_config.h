/* Compatibility shim for programs written against Open MPI's OPAL: the build-time
   switches of an FT-enabled OPAL, as libopalcrs provides them. */
#ifndef OPALCRS_OPAL_CONFIG_H
#define OPALCRS_OPAL_CONFIG_H
#define OPAL_ENABLE_FT 1
#define OPAL_ENABLE_FT_CR 1
#define OPAL_ENABLE_FT_THREAD 1
#define OPAL_ENABLE_CRDEBUG 0
#endif
