#pragma once
// Everything ironmoe offers, in pipeline order.
#include "ironmoe/combine.h"
#include "ironmoe/config.h"
#include "ironmoe/error.h"
#include "ironmoe/experts.h"
#include "ironmoe/gather.h"
#include "ironmoe/layer.h"
#include "ironmoe/plan.h"
#include "ironmoe/quantize.h"
#include "ironmoe/route.h"
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"
#include "ironmoe/types.h"
