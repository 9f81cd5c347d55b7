// Drivers that exist only for tests, registered next to the built-in ones in an explicit
// test registry:
//   test-proto   a protocol over memory; `veto` (a permission mask) makes PreparePerm refuse
//                any cumulative permission containing one of those bits; counts calls.
//   test-fmt     a format with a "file" child of role `role` (image|data|metadata) and an
//                optional "backing" (cow) child; data passes through to "file".
//   test-delay   a filter that delays every read/write by `ns` nanoseconds.
#ifndef LIBBLOCK_TESTS_TEST_DRIVERS_H_
#define LIBBLOCK_TESTS_TEST_DRIVERS_H_

#include "core/registry.h"

namespace libblock::testing {

const Registry& TestRegistry();

// While set, every test-proto node refuses every PreparePerm (even relaxations).
void SetTestProtoRefuseAll(bool refuse);

}  // namespace libblock::testing

#endif  // LIBBLOCK_TESTS_TEST_DRIVERS_H_
