# Run by CTest as a script (cmake -P): install the build into WORK_DIR/prefix, then configure,
# build and run the consumer project against that prefix. Any failing step fails the test with
# the step's output.
foreach(var IRONMOE_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER CONFIG)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_install_test.cmake: -D${var}=... is required")
  endif()
endforeach()

function(run_step name)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "install test: ${name} failed (${status})\n  ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "install test: ${name} ok")
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")

run_step("cmake --install" ${CMAKE_COMMAND} --install "${IRONMOE_BUILD_DIR}" --prefix "${prefix}"
         --config "${CONFIG}")

set(configure -S "${CONSUMER_SOURCE_DIR}" -B "${build}" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${prefix}" "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
    "-DCMAKE_BUILD_TYPE=${CONFIG}")
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CUDA_TOOLKIT_ROOT)
  list(APPEND configure "-DCUDAToolkit_ROOT=${CUDA_TOOLKIT_ROOT}")
endif()
run_step("configure the consumer" ${CMAKE_COMMAND} ${configure})
run_step("build the consumer" ${CMAKE_COMMAND} --build "${build}" --config "${CONFIG}")

foreach(candidate "${build}/ironmoe_consumer" "${build}/${CONFIG}/ironmoe_consumer"
                  "${build}/ironmoe_consumer.exe" "${build}/${CONFIG}/ironmoe_consumer.exe")
  if(EXISTS "${candidate}")
    set(consumer "${candidate}")
    break()
  endif()
endforeach()
if(NOT consumer)
  message(FATAL_ERROR "install test: the consumer binary was not found under ${build}")
endif()
run_step("run the consumer" "${consumer}")
message(STATUS "${step_output}")
