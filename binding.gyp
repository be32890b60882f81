# The CPU-only build of the addon, through node-gyp: what `npm install` compiles when no prebuilt
# binary fits. The source list lives in native/sources.json, which CMakeLists.txt reads too, so the
# two builds cannot drift apart. CUDA is never built here (see CMakeLists.txt for that).
#
# No -march=native: the kernels pick AVX2/AVX-512 code paths at run time (function target
# attributes plus a CPU check), so one binary runs on any x86-64 machine. -ffp-contract=off: the
# kernels place their fused multiply-adds themselves (see CMakeLists.txt).
{
  "targets": [
    {
      "target_name": "luna_attention",
      "sources": [
        "<!@(node -p \"const s = require('./native/sources.json'); s.kernels.concat(s.bindings, s.cudaStub).join(' ')\")"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags": ["-O3", "-ffp-contract=off", "-fvisibility=hidden", "-pthread"],
      "cflags_cc": ["-std=c++17", "-O3", "-ffp-contract=off", "-fexceptions", "-frtti", "-fvisibility=hidden", "-pthread"],
      "ldflags": ["-pthread"],
      "xcode_settings": {
        "GCC_ENABLE_CPP_EXCEPTIONS": "YES",
        "CLANG_CXX_LANGUAGE_STANDARD": "c++17",
        "GCC_OPTIMIZATION_LEVEL": "3",
        "GCC_SYMBOLS_PRIVATE_EXTERN": "YES",
        "MACOSX_DEPLOYMENT_TARGET": "10.15"
      },
      "msvs_settings": {
        "VCCLCompilerTool": {
          "ExceptionHandling": 1,
          "AdditionalOptions": ["/std:c++17", "/O2"]
        }
      }
    }
  ]
}
