/* placeholder so the component library is never empty */
int bw__runtime_component_placeholder;
