/* placeholder so the component library is never empty */
int bw__clients_component_placeholder;
