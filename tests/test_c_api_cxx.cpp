// test_c_api.c compiled as C++: the header and a whole workflow in a C++ translation
// unit with every warning an error.
#include "test_c_api.c"
