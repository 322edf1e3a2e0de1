# Install: static + shared library, headers, bulwark.pc, and a CMake package
# giving bulwark::bulwark (shared) and bulwark::bulwark_static.
include(CMakePackageConfigHelpers)
install(TARGETS bulwark_static bulwark_shared EXPORT bulwarkTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT bulwarkTargets NAMESPACE bulwark::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/bulwark)
configure_package_config_file(cmake/bulwarkConfig.cmake.in
  ${PROJECT_BINARY_DIR}/bulwarkConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/bulwark)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/bulwarkConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/bulwarkConfig.cmake
  ${PROJECT_BINARY_DIR}/bulwarkConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/bulwark)
configure_file(cmake/bulwark.pc.in ${PROJECT_BINARY_DIR}/bulwark.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/bulwark.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
