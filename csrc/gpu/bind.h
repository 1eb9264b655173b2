#pragma once

#include <pybind11/pybind11.h>

namespace kiln::gpu
{

/// @brief Adds PlanExecutor (a kiln._core.Backend: call after the runtime's bindings) and the
/// `gpu` submodule (eval_expr, device_count, launch_cubin) to kiln._core.
void bind(pybind11::module_& m);

} // namespace kiln::gpu
