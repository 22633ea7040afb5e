// The CUDA DeviceTrainer (optim/device.h): GPTCuda + InnerOptimizerCuda.
#pragma once
#include "kernels/matmul.h"

namespace diloco {

// Registers the CUDA backend with the training loop. Called from main() in CUDA builds, and in the
// emulated build (diloco-emu), where "the device" is the CUDA emulator.
void register_cuda_backend();

// The precision of the CUDA trainers' matrix products (fp32 or tf32, kernels/matmul.h), for the
// trainers created after the call; fp32 until then.
void set_cuda_matmul_precision(MatmulPrecision p);

}  // namespace diloco
