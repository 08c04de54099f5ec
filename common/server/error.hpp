// Errors that name the system call and its argument, e.g.
// "bind 127.0.0.1:8080: Address already in use".
#pragma once

#include <cerrno>
#include <string>
#include <system_error>

namespace common {

// Throws std::system_error for the current errno; what() reads "WHAT: strerror".
[[noreturn]] inline void throw_errno(const std::string& what) {
    throw std::system_error(errno, std::generic_category(), what);
}

// Same, for functions that return an error code instead of setting errno.
[[noreturn]] inline void throw_error_code(int code, const std::string& what) {
    throw std::system_error(code, std::generic_category(), what);
}

}  // namespace common
