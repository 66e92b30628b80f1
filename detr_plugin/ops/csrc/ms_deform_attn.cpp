// Python bindings of detr_plugin._ext (the MSDA CUDA op); the kernels are in ms_deform_attn_cuda.cu
// and ms_deform_attn_deterministic.cu.
#include <torch/extension.h>

#include "ms_deform_attn.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &detr_plugin::ms_deform_attn_forward,
        "MSDA forward: (value, spatial_shapes, level_start_index, sampling_locations, "
        "attention_weights, level_points, discrete) -> output (bs, num_query, heads * dim)");
  m.def("ms_deform_attn_backward", &detr_plugin::ms_deform_attn_backward,
        "MSDA backward: (value, ..., attention_weights, grad_output, level_points, discrete) -> "
        "[grad_value, grad_sampling_locations, grad_attention_weights]");
  m.def("ms_deform_attn_backward_deterministic",
        &detr_plugin::ms_deform_attn_backward_deterministic,
        "MSDA backward without floating-point atomics, bitwise reproducible; arguments and "
        "results as ms_deform_attn_backward");
}
