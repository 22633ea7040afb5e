#include "optim/device.h"

namespace diloco {

static DeviceBackend g_backend;

void register_device_backend(const DeviceBackend& backend) { g_backend = backend; }
const DeviceBackend& device_backend() { return g_backend; }

}  // namespace diloco
