/* placeholder so the component library is never empty */
int bw__config_component_placeholder;
