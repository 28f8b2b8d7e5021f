// Stand-in for the torch header of the same name in the host-thread harness build (csrc/harness):
// the kernel files include it, but their ATen code is left out there (SIMPRUNE_HOST_HARNESS).
#pragma once
