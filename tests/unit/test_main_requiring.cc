// The Catch session of test executables that need a program, a device or root: main() exits
// 77 (meson's "skipped") when ExecutableRequirements(), defined by the executable through
// LB_TEST_REQUIRES, is not met.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "test_support.h"

int main(int argc, char** argv) {
  if (!libblock::testing::RequirementsMet(libblock::testing::ExecutableRequirements())) return 77;
  return Catch::Session().run(argc, argv);
}
