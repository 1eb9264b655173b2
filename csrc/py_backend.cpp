#include "py_backend.h"

#include <pybind11/numpy.h>

#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace kiln
{
namespace
{
template <typename T>
py::array_t<T> toArray(std::vector<T> const& values, std::vector<py::ssize_t> shape)
{
    return py::array_t<T>(std::move(shape), values.data()); // copies: the step outlives no call
}

std::string firstLine(std::string const& text)
{
    return text.substr(0, text.find('\n'));
}
} // namespace

PyBackend::PyBackend(py::object backend)
    : mBackend(std::move(backend))
{
    if (!py::hasattr(mBackend, "forward") || !py::hasattr(mBackend, "num_blocks"))
    {
        throw std::invalid_argument("the backend must have `num_blocks` and `forward(step) -> logits`; got an object of type "
            + py::str(py::type::of(mBackend).attr("__name__")).cast<std::string>());
    }
    try
    {
        mNumBlocks = mBackend.attr("num_blocks").cast<SizeType>();
    }
    catch (py::cast_error const&)
    {
        throw std::invalid_argument("backend.num_blocks must be an int");
    }
}

PyBackend::~PyBackend()
{
    py::gil_scoped_acquire gil;
    mBackend = py::object();
}

SizeType PyBackend::numBlocks() const
{
    return mNumBlocks;
}

StepOutput PyBackend::forward(StepInputs const& step)
{
    py::gil_scoped_acquire gil;
    try
    {
        py::ssize_t const numTokens = step.numTokens();
        py::ssize_t const numSeqs = step.numSequences;
        py::dict inputs;
        inputs["input_ids"] = toArray(step.inputIds, {numTokens});
        inputs["positions"] = toArray(step.positions, {numTokens});
        inputs["slot_mapping"] = toArray(step.slotMapping, {numTokens});
        inputs["block_tables"] = toArray(step.blockTables, {numSeqs, step.maxBlocksPerSeq});
        inputs["context_lens"] = toArray(step.contextLens, {numSeqs});
        inputs["query_start"] = toArray(step.queryStart, {numSeqs + 1});
        inputs["last_token_index"] = toArray(step.lastTokenIndex, {numSeqs});
        py::object const result = mBackend.attr("forward")(inputs);
        auto const logits = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(result);
        if (!logits)
        {
            PyErr_Clear();
            throw std::runtime_error("backend.forward must return float32 logits [B, vocab], got an object of type "
                + py::str(py::type::of(result).attr("__name__")).cast<std::string>());
        }
        if (logits.ndim() != 2 || logits.shape(0) != numSeqs)
        {
            throw std::runtime_error("backend.forward returned logits of shape "
                + py::str(py::tuple(py::cast(std::vector<py::ssize_t>(logits.shape(), logits.shape() + logits.ndim()))))
                      .cast<std::string>()
                + ", expected (" + std::to_string(numSeqs) + ", vocab)");
        }
        return StepOutput{{logits.data(), logits.data() + logits.size()}, {}, {}};
    }
    catch (py::error_already_set const& e)
    {
        throw std::runtime_error(firstLine(e.what()));
    }
}

} // namespace kiln
