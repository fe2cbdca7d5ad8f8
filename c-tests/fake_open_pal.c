/* Stands in for Open MPI's libopen-pal: only its file name matters. */
int opalcrs_test_fake_open_pal(void);
int opalcrs_test_fake_open_pal(void) { return 0; }
