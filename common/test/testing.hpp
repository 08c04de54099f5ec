// Catch2 2.x (a single header, Debian) and 3.x (a library, Ubuntu 24.04 and
// Homebrew) from the same test sources.
#pragma once

#if __has_include(<catch2/catch_all.hpp>)
#include <catch2/catch_all.hpp>
// 2.x declares Approx in the global namespace; 3.x only as Catch::Approx.
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif
