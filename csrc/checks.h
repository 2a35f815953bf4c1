// Boundary checks shared by the CPU and CUDA glue. Each names the argument and what was expected, so a
// caller who passes a wrong tensor learns which one and why.
#pragma once

#include <c10/util/Exception.h>

#define ATS_CHECK_DIM(x, d) \
  TORCH_CHECK((x).dim() == (d), #x " must be a " #d "-D tensor, got shape ", (x).sizes())
#define ATS_CHECK_DTYPE(x, t) \
  TORCH_CHECK((x).scalar_type() == (t), #x " must have dtype " #t ", got ", (x).scalar_type())
#define ATS_CHECK_SIZE(x, i, n) \
  TORCH_CHECK((x).size(i) == (n), #x ".size(" #i ") must be ", (n), ", got shape ", (x).sizes())
#define ATS_CHECK_SAME_DEVICE(x, y) \
  TORCH_CHECK((x).device() == (y).device(), #x " is on ", (x).device(), " but " #y " is on ", (y).device())
#define ATS_CHECK_FLOATING(x)                                                                     \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kHalf ||               \
                  (x).scalar_type() == at::kBFloat16 || (x).scalar_type() == at::kDouble,        \
              #x " must be float32, float16, bfloat16 or float64, got ", (x).scalar_type())
