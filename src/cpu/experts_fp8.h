#pragma once
// The CPU expert stage with FP8 experts (ExpertArgs::quant != none), called by cpu::experts once
// the row ranges are checked.
#include "cpu/tile_matmul.h"
#include "ironmoe/experts.h"

namespace ironmoe::cpu {

void experts_fp8(const ExpertArgs& args, const tiles::Problem& problem, ThreadPool* threads);

}  // namespace ironmoe::cpu
