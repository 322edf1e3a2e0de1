/* placeholder so the component library is never empty */
int bw__layers_component_placeholder;
