// Catch2 v2 has no Catch2WithMain: every test executable links this translation unit.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
