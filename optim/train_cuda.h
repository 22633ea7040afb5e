// The CUDA DeviceTrainer (optim/device.h): GPTCuda + InnerOptimizerCuda.
#pragma once

namespace diloco {

// Registers the CUDA backend with the training loop. Called from main() in CUDA builds, and in the
// emulated build (diloco-emu), where "the device" is the CUDA emulator.
void register_cuda_backend();

}  // namespace diloco
