#pragma once

#include "runtime/backend.h"

#include <pybind11/pybind11.h>

namespace kiln
{

/// @brief Adapts a Python object with `num_blocks` and `forward(step: dict) -> ndarray` to Backend.
///
/// The executor calls forward from its own thread; the GIL is taken only around the Python call.
class PyBackend final : public Backend
{
public:
    /// @brief Wraps `backend`; throws std::invalid_argument when it lacks the interface.
    explicit PyBackend(pybind11::object backend);
    /// @brief Drops the Python object under the GIL, from whichever thread.
    ~PyBackend() override;

    PyBackend(PyBackend const&) = delete;
    PyBackend& operator=(PyBackend const&) = delete;
    PyBackend(PyBackend&&) = delete;
    PyBackend& operator=(PyBackend&&) = delete;

    /// @brief `backend.num_blocks`, read once at construction.
    [[nodiscard]] SizeType numBlocks() const override;
    /// @brief Calls `backend.forward` with the step as numpy arrays; a Python exception becomes
    /// std::runtime_error with its first line.
    [[nodiscard]] StepOutput forward(StepInputs const& step) override;

private:
    pybind11::object mBackend;
    SizeType mNumBlocks = 0;
};

} // namespace kiln
